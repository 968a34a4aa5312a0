// The Optimizer on tiny hand-made parameters (CPU): against a float64
// re-statement of AdamW with clipping, the three storage modes, skipped steps,
// and a state round trip through a safetensors file that continues bitwise.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numerics.h"
#include "io/safetensors.h"
#include "testing.h"
#include "train/optimizer.h"

namespace halo {
namespace {

using testing::random_normal;

const std::vector<Shape> kShapes{{3, 4}, {5}};  // a weight (decayed) and a bias (not)

Tensor copy_of(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  y.copy_from(x);
  return y;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Parameters whose gradients the test sets before each step.
struct Toy {
  std::vector<Tensor> values, grads;
  int updated = 0;
  std::vector<Parameter> parameters(const std::shared_ptr<Toy>& self) {
    std::vector<Parameter> out;
    for (size_t i = 0; i < values.size(); ++i) {
      Parameter p;
      p.name = i == 0 ? "layers.0.w" : "layers.0.b";
      p.value = values[i];
      p.grad = [self, i] { return self->grads[i]; };
      p.updated = [self] { ++self->updated; };
      p.decay = i == 0;
      out.push_back(p);
    }
    return out;
  }
};

std::shared_ptr<Toy> make_toy(DType dtype, uint64_t seed = 1) {
  auto t = std::make_shared<Toy>();
  for (size_t i = 0; i < kShapes.size(); ++i) t->values.push_back(random_normal(kShapes[i], seed + i, 1.0f, dtype));
  return t;
}

// Gradients of step s (1-based), norm about `scale` * sqrt(17).
void set_grads(Toy& t, int s, float scale = 1.0f) {
  t.grads.clear();
  for (size_t i = 0; i < kShapes.size(); ++i) t.grads.push_back(random_normal(kShapes[i], 1000 + 10 * s + i, scale));
}

OptimizerOptions options(MasterWeights mw = MasterWeights::fp32, bool sr = false) {
  OptimizerOptions o;
  o.beta1 = 0.9f;
  o.beta2 = 0.99f;
  o.eps = 1e-8f;
  o.weight_decay = 0.1f;
  o.master_weights = mw;
  o.stochastic_rounding = sr;
  o.seed = 77;
  return o;
}

// AdamW in float64, as kernels/adamw.h states it, with global-norm clipping.
struct Reference {
  std::vector<std::vector<double>> p, m, v;
  std::vector<bool> decay{true, false};
  int64_t t = 0;
  explicit Reference(const Toy& toy) {
    for (const Tensor& x : toy.values) {
      const auto f = x.to_floats();
      p.emplace_back(f.begin(), f.end());
      m.emplace_back(f.size(), 0.0);
      v.emplace_back(f.size(), 0.0);
    }
  }
  // Returns the gradient norm before clipping.
  double step(const Toy& toy, double lr, double max_norm, const OptimizerOptions& o) {
    double sq = 0;
    for (const Tensor& g : toy.grads)
      for (float x : g.to_floats()) sq += static_cast<double>(x) * x;
    const double norm = std::sqrt(sq);
    const double c = max_norm > 0 ? std::min(1.0, max_norm / (norm + 1e-6)) : 1.0;
    ++t;
    const double b1 = o.beta1, b2 = o.beta2;
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      const auto g = toy.grads[i].to_floats();
      for (size_t k = 0; k < p[i].size(); ++k) {
        const double gk = g[k] * c;
        m[i][k] = b1 * m[i][k] + (1 - b1) * gk;
        v[i][k] = b2 * v[i][k] + (1 - b2) * gk * gk;
        const double wd = decay[i] ? lr * o.weight_decay : 0.0;
        p[i][k] -= lr / bc1 * m[i][k] / (std::sqrt(v[i][k] / bc2) + o.eps) + wd * p[i][k];
      }
    }
    return norm;
  }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(a[i] - b[i]));
  return e;
}

void run_against_reference(DType dtype, MasterWeights mw, float max_norm, float grad_scale, double tol) {
  auto toy = make_toy(dtype);
  Reference ref(*toy);
  const OptimizerOptions o = options(mw);
  Optimizer opt(toy->parameters(toy), o);
  for (int s = 1; s <= 6; ++s) {
    set_grads(*toy, s, grad_scale);
    const float lr = 1e-2f * static_cast<float>(s) / 6.0f;
    const Tensor norm_sq = opt.step(lr, max_norm);
    const double norm = opt.finish_step(norm_sq);
    const double ref_norm = ref.step(*toy, lr, max_norm, o);
    EXPECT_NEAR(norm, ref_norm, 1e-6 * ref_norm);
    EXPECT_EQ(opt.steps(), s);
    EXPECT_EQ(toy->updated, 2 * s);
    for (size_t i = 0; i < kShapes.size(); ++i)
      EXPECT_LT(max_abs_diff(toy->values[i].to_floats(), ref.p[i]), tol) << "step " << s << " tensor " << i;
  }
}

TEST(Optimizer, F32ValuesMatchFloat64AdamW) {
  run_against_reference(DType::f32, MasterWeights::fp32, 0.0f, 1.0f, 2e-6);
  // bf16 master_weights with f32 values: still all f32 (nothing to save on the CPU model).
  run_against_reference(DType::f32, MasterWeights::bf16, 0.0f, 1.0f, 2e-6);
}

TEST(Optimizer, ClipsToTheGlobalNorm) {
  // Gradients of norm ~40 clipped to 0.5; and a max_norm above the norm changes nothing.
  run_against_reference(DType::f32, MasterWeights::fp32, 0.5f, 10.0f, 2e-6);
  run_against_reference(DType::f32, MasterWeights::fp32, 1e6f, 1.0f, 2e-6);
}

TEST(Optimizer, Bf16ValuesWithF32Master) {
  auto toy = make_toy(DType::bf16);
  Reference ref(*toy);
  Optimizer opt(toy->parameters(toy), options());
  for (int s = 1; s <= 5; ++s) {
    set_grads(*toy, s);
    opt.finish_step(opt.step(1e-2f, 1.0f));
    ref.step(*toy, 1e-2, 1.0, options());
    const NamedTensors state = opt.state_dict();
    for (size_t i = 0; i < kShapes.size(); ++i) {
      const Tensor& master = state.at(opt.parameters()[i].name + ".master");
      EXPECT_EQ(master.dtype(), DType::f32);
      EXPECT_LT(max_abs_diff(master.to_floats(), ref.p[i]), 2e-6);
      EXPECT_TRUE(same_bits(master.to(DType::bf16), toy->values[i])) << "the value is bf16(master)";
    }
  }
  const OptimizerMemory mem = opt.memory();
  EXPECT_EQ(mem.master, 17 * 4);
  EXPECT_EQ(mem.states, 17 * 8);
}

TEST(Optimizer, Bf16StatesNearestAndStochastic) {
  for (const bool sr : {false, true}) {
    auto toy = make_toy(DType::bf16);
    Reference ref(*toy);
    Optimizer opt(toy->parameters(toy), options(MasterWeights::bf16, sr));
    EXPECT_EQ(opt.memory().master, 0);
    EXPECT_EQ(opt.memory().states, 17 * 4);
    for (int s = 1; s <= 5; ++s) {
      set_grads(*toy, s);
      opt.finish_step(opt.step(1e-2f, 1.0f));
      ref.step(*toy, 1e-2, 1.0, options());
    }
    for (size_t i = 0; i < kShapes.size(); ++i)
      EXPECT_LT(max_abs_diff(toy->values[i].to_floats(), ref.p[i]), 0.05) << "sr " << sr;
    EXPECT_EQ(opt.state_dict().count("layers.0.w.master"), 0u);
  }
  // Stochastic rounding is reproducible and differs from rounding to nearest.
  std::vector<Tensor> runs;
  for (const bool sr : {true, true, false}) {
    auto toy = make_toy(DType::bf16);
    Optimizer opt(toy->parameters(toy), options(MasterWeights::bf16, sr));
    set_grads(*toy, 1);
    opt.finish_step(opt.step(1e-3f, 0.0f));
    runs.push_back(copy_of(toy->values[0]));
  }
  EXPECT_TRUE(same_bits(runs[0], runs[1]));
  EXPECT_FALSE(same_bits(runs[0], runs[2]));
}

TEST(Optimizer, NonFiniteGradientsSkipTheStep) {
  for (const DType dtype : {DType::f32, DType::bf16}) {
    auto toy = make_toy(dtype), clean = make_toy(dtype);
    Optimizer opt(toy->parameters(toy), options()), clean_opt(clean->parameters(clean), options());
    set_grads(*toy, 1);
    set_grads(*clean, 1);
    opt.finish_step(opt.step(1e-2f, 1.0f));
    clean_opt.finish_step(clean_opt.step(1e-2f, 1.0f));
    const Tensor before = copy_of(toy->values[0]);
    const NamedTensors state_before = opt.state_dict();
    const Tensor m_before = copy_of(state_before.at("layers.0.b.m"));

    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      set_grads(*toy, 2);
      toy->grads[1].data_as<float>()[3] = bad;
      const double norm = opt.finish_step(opt.step(1e-2f, 1.0f));
      EXPECT_FALSE(std::isfinite(norm));
      EXPECT_TRUE(same_bits(toy->values[0], before)) << "a skipped step writes nothing";
      EXPECT_TRUE(same_bits(opt.state_dict().at("layers.0.b.m"), m_before));
      EXPECT_EQ(opt.steps(), 1);
    }
    EXPECT_EQ(opt.skipped(), 2);
    // The next good step is AdamW step 2, as in a run that never saw the bad gradients.
    set_grads(*toy, 2);
    set_grads(*clean, 2);
    opt.finish_step(opt.step(1e-2f, 1.0f));
    clean_opt.finish_step(clean_opt.step(1e-2f, 1.0f));
    for (size_t i = 0; i < kShapes.size(); ++i) EXPECT_TRUE(same_bits(toy->values[i], clean->values[i]));
  }
}

class OptimizerState : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() / ("halo_opt_" + std::to_string(::getpid()) + ".safetensors"))
                .string();
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_;
};

TEST_F(OptimizerState, SaveLoadContinuesBitwise) {
  struct Mode {
    DType dtype;
    MasterWeights mw;
    bool sr;
  };
  for (const Mode mode : {Mode{DType::f32, MasterWeights::fp32, false}, Mode{DType::bf16, MasterWeights::fp32, false},
                          Mode{DType::bf16, MasterWeights::bf16, true}}) {
    SCOPED_TRACE(std::string(dtype_name(mode.dtype)) + (mode.mw == MasterWeights::fp32 ? " fp32 master" : " bf16"));
    auto a = make_toy(mode.dtype);
    Optimizer opt_a(a->parameters(a), options(mode.mw, mode.sr));
    for (int s = 1; s <= 3; ++s) {
      set_grads(*a, s);
      opt_a.finish_step(opt_a.step(1e-2f, 1.0f));
    }
    write_safetensors(path_, opt_a.state_dict());
    // The model as a checkpoint saved in bf16 holds it (lossy for f32 values).
    auto b = make_toy(mode.dtype, 99);
    for (size_t i = 0; i < kShapes.size(); ++i) b->values[i].copy_from(a->values[i].to(DType::bf16).to(mode.dtype));

    Optimizer opt_b(b->parameters(b), options(mode.mw, mode.sr));
    const SafetensorsReader reader(path_);
    NamedTensors loaded;
    for (const std::string& name : reader.names()) loaded[name] = reader.read(name);
    b->updated = 0;
    opt_b.load_state_dict(loaded, path_);
    EXPECT_EQ(b->updated, 2);
    EXPECT_EQ(opt_b.steps(), 3);
    for (int s = 4; s <= 6; ++s) {
      set_grads(*a, s);
      set_grads(*b, s);
      opt_a.finish_step(opt_a.step(3e-3f, 1.0f));
      opt_b.finish_step(opt_b.step(3e-3f, 1.0f));
    }
    for (size_t i = 0; i < kShapes.size(); ++i) EXPECT_TRUE(same_bits(a->values[i], b->values[i])) << "tensor " << i;
    const NamedTensors sa = opt_a.state_dict(), sb = opt_b.state_dict();
    ASSERT_EQ(sa.size(), sb.size());
    for (const auto& [name, t] : sa) EXPECT_TRUE(same_bits(t, sb.at(name))) << name;
  }
}

TEST(Optimizer, Errors) {
  auto toy = make_toy(DType::f32);
  std::vector<Parameter> dup = toy->parameters(toy);
  dup[1].name = dup[0].name;
  EXPECT_THROW(Optimizer(dup, options()), Error);
  EXPECT_THROW(Optimizer({}, options()), Error);
  EXPECT_THROW(parse_master_weights("fp16"), Error);

  Optimizer opt(toy->parameters(toy), options());
  toy->grads = {Tensor::zeros({3, 4}, DType::f32), Tensor::zeros({4}, DType::f32)};
  EXPECT_THROW(opt.step(1e-3f, 1.0f), Error);  // a gradient of the wrong size

  NamedTensors state = opt.state_dict();
  auto expect_load_error = [&](const NamedTensors& s, const char* what) {
    try {
      opt.load_state_dict(s, "ckpt/training_state.safetensors");
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
      EXPECT_NE(msg.find("ckpt/training_state.safetensors"), std::string::npos) << msg;
    }
  };
  NamedTensors missing = state;
  missing.erase("layers.0.b.v");
  expect_load_error(missing, "layers.0.b.v");
  NamedTensors extra = state;
  extra["layers.1.w.m"] = Tensor::zeros({12}, DType::f32);
  expect_load_error(extra, "layers.1.w.m");
  NamedTensors wrong = state;
  wrong["layers.0.w.m"] = Tensor::zeros({11}, DType::f32);
  expect_load_error(wrong, "layers.0.w.m");
  NamedTensors no_step = state;
  no_step.erase("optimizer.step");
  expect_load_error(no_step, "optimizer.step");
}

}  // namespace
}  // namespace halo
