#include "train/optimizer.h"

#include <cmath>
#include <set>

#include "core/allocator.h"
#include "core/error.h"

namespace halo {

namespace {

// A copy of host or device tensor x in `dtype`, on x's device.
Tensor converted(const Tensor& x, DType dtype) {
  return x.to(Device::cpu).to(dtype).to(x.device());
}

// dst <- src, converting the dtype if they differ; the element counts must match.
void load_into(const Tensor& dst, const Tensor& src, const std::string& source, const std::string& name) {
  HALO_CHECK(src.numel() == dst.numel(), source, ": optimizer state '", name, "' is ", src.describe(),
             ", expected ", dst.numel(), " elements (", dst.describe(), ")");
  Tensor d = dst;  // copy_from is non-const; the storage is shared
  d.copy_from(src.dtype() == dst.dtype() ? src : src.to(Device::cpu).to(dst.dtype()));
}

}  // namespace

MasterWeights parse_master_weights(const std::string& name) {
  if (name == "fp32") return MasterWeights::fp32;
  if (name == "bf16") return MasterWeights::bf16;
  HALO_FAIL("unknown master_weights '", name, "' (accepted: fp32, bf16)");
}

Optimizer::Optimizer(std::vector<Parameter> params, const OptimizerOptions& options)
    : params_(std::move(params)), options_(options) {
  HALO_CHECK(!params_.empty(), "Optimizer: no parameters to train");
  std::set<std::string> names;
  for (const Parameter& p : params_) {
    HALO_CHECK(names.insert(p.name).second, "Optimizer: parameter name '", p.name, "' appears twice");
    HALO_CHECK(p.value.defined() && p.grad, "Optimizer: parameter '", p.name, "' has no value or no grad()");
    const DType dt = p.value.dtype();
    HALO_CHECK(dt == DType::f32 || dt == DType::bf16, "Optimizer: parameter '", p.name,
               "' must be f32 or bf16, got ", p.value.describe());
    check_same_device(params_[0].value, p.value, "Optimizer (all parameters on one device)");
    Slot s;
    const bool master = dt == DType::bf16 && options_.master_weights == MasterWeights::fp32;
    if (master) s.master = converted(p.value, DType::f32);
    const DType state_dt = dt == DType::f32 || master ? DType::f32 : DType::bf16;
    s.m = Tensor::zeros(p.value.shape(), state_dt, p.value.device());
    s.v = Tensor::zeros(p.value.shape(), state_dt, p.value.device());
    slots_.push_back(std::move(s));
  }
}

Tensor Optimizer::step(float lr, float max_norm) {
  std::vector<Tensor> grads, grad_rows;
  grads.reserve(params_.size());
  grad_rows.reserve(params_.size());
  for (const Parameter& p : params_) {
    Tensor g = p.rotated_grad ? p.rotated_grad() : p.grad();
    HALO_CHECK(g.defined() && g.numel() == p.value.numel(), "Optimizer: gradient of '", p.name, "' is ",
               g.defined() ? g.describe() : "undefined", ", the value is ", p.value.describe());
    HALO_CHECK(g.dtype() == DType::f32 || g.dtype() == DType::bf16, "Optimizer: gradient of '", p.name,
               "' must be f32 or bf16, got ", g.describe());
    check_same_device(p.value, g, "Optimizer gradient");
    grads.push_back(std::move(g));
    grad_rows.push_back(p.grad_rows ? p.grad_rows() : Tensor());
  }
  const Tensor norm_sq = global_norm_squared(grads, grad_rows);
  const Tensor scale = clip_coefficient(norm_sq, max_norm);  // NaN for non-finite gradients: no update

  AdamWConfig cfg;
  cfg.lr = lr;
  cfg.beta1 = options_.beta1;
  cfg.beta2 = options_.beta2;
  cfg.eps = options_.eps;
  cfg.weight_decay = options_.weight_decay;
  cfg.step = ++step_;
  cfg.stochastic_rounding = options_.stochastic_rounding;
  cfg.seed = options_.seed;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Parameter& p = params_[i];
    const Slot& s = slots_[i];
    AdamWParam t;
    t.param = s.master.defined() ? s.master : p.value;
    t.grad = grads[i];
    t.m = s.m;
    t.v = s.v;
    if (s.master.defined()) t.param_bf16 = p.value;
    t.decay = p.decay;
    t.grad_rotated = static_cast<bool>(p.rotated_grad);
    t.grad_rows = grad_rows[i];
    t.id = static_cast<uint32_t>(i);
    adamw_step(t, cfg, scale);
  }
  for (const Parameter& p : params_)
    if (p.updated) p.updated();
  return norm_sq;
}

double Optimizer::finish_step(const Tensor& norm_sq) {
  const double x = static_cast<double>(norm_sq.to_floats().at(0));
  if (!std::isfinite(x)) {
    --step_;  // nothing was written: the next step is the same AdamW step again
    ++skipped_;
  }
  return std::sqrt(x);
}

OptimizerMemory Optimizer::memory() const {
  OptimizerMemory mem;
  const auto held = [](const Tensor& t) { return static_cast<int64_t>(held_bytes(t.nbytes(), t.device())); };
  for (const Slot& s : slots_) {
    if (s.master.defined()) mem.master += held(s.master);
    mem.states += held(s.m) + held(s.v);
  }
  return mem;
}

NamedTensors Optimizer::state_dict() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Parameter& p = params_[i];
    const Slot& s = slots_[i];
    out[p.name + ".m"] = s.m;
    out[p.name + ".v"] = s.v;
    if (s.master.defined()) out[p.name + ".master"] = s.master;
    else if (p.value.dtype() == DType::f32) out[p.name + ".master"] = p.value;
  }
  HALO_CHECK(step_ <= INT32_MAX, "Optimizer: step ", step_, " does not fit the saved i32");
  Tensor step = Tensor::empty({1}, DType::i32);
  step.data_as<int32_t>()[0] = static_cast<int32_t>(step_);
  out["optimizer.step"] = step;
  return out;
}

void Optimizer::load_state_dict(const NamedTensors& state, const std::string& source) {
  std::set<std::string> known{"optimizer.step"};
  for (const Parameter& p : params_)
    for (const char* suffix : {".m", ".v", ".master"}) known.insert(p.name + suffix);
  for (const auto& [name, t] : state)
    HALO_CHECK(known.count(name), source, ": optimizer state '", name, "' matches no parameter of the model");
  auto find = [&](const std::string& name) -> const Tensor* {
    auto it = state.find(name);
    return it == state.end() ? nullptr : &it->second;
  };

  const Tensor* step = find("optimizer.step");
  HALO_CHECK(step && step->numel() == 1, source, ": optimizer state 'optimizer.step' is missing or not one number");
  const int64_t step_value = static_cast<int64_t>(std::llround(step->to_floats()[0]));
  HALO_CHECK(step_value >= 0, source, ": optimizer.step is ", step_value);

  for (size_t i = 0; i < params_.size(); ++i) {
    const Parameter& p = params_[i];
    const Slot& s = slots_[i];
    for (const auto& [suffix, dst] : {std::pair{".m", &s.m}, std::pair{".v", &s.v}}) {
      const Tensor* src = find(p.name + suffix);
      HALO_CHECK(src, source, ": optimizer state '", p.name, suffix, "' is missing");
      load_into(*dst, *src, source, p.name + suffix);
    }
    const Tensor* master = find(p.name + ".master");
    if (s.master.defined()) {
      if (master) load_into(s.master, *master, source, p.name + ".master");
      else load_into(s.master, converted(p.value, DType::f32), source, p.name + ".master");
      load_into(p.value, converted(s.master, DType::bf16), source, p.name);
    } else if (master) {
      load_into(p.value, *master, source, p.name + ".master");  // rounded to bf16 when the value is bf16
    }
  }
  step_ = step_value;
  for (const Parameter& p : params_)
    if (p.updated) p.updated();
}

}  // namespace halo
