// The CUDA row/elementwise kernels of the Llama block (rmsnorm, swiglu,
// embedding, rope) against their CPU twins, on the same random inputs (never
// zeros) in the same dtypes, so the only differences are f32 evaluation order,
// FMA contraction and libm ulps, seen through the final rounding to bf16.
//
// Tolerances (relative error, ||gpu - cpu|| / ||cpu||, worst output of a case):
//   bf16 activations 2e-4: values a few f32 ulps apart round to neighbouring
//                          bf16 values now and then (1 bf16 ulp = 4e-3 relative);
//   f32 activations  1e-5 (rope 2e-6: one f32 product, cosf / sinf to an ulp);
//   embedding        exact: the same f32 additions in the same order.
// `full` adds Llama sizes: 8192 tokens x 4096 / 2048 hidden, 14336 ffn,
// 32 heads x 128 head_dim with 8 kv heads, a 128256-token vocabulary.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "core/rng.h"
#include "kernels/embedding.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/selfcheck.h"
#include "kernels/swiglu.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace {

constexpr double kBf16Tolerance = 2e-4;
constexpr double kF32Tolerance = 1e-5;
constexpr double kRopeF32Tolerance = 2e-6;

double tolerance_for(DType act) { return act == DType::bf16 ? kBf16Tolerance : kF32Tolerance; }

// Host tensor of mean + stddev * normal values, stored as dtype.
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, float stddev = 1.0f, float mean = 0.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), dtype, i, mean + stddev * normal01(seed, 0, i));
  return t;
}

Tensor clone(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  c.copy_from(t);
  return c;
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t v : d) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

// One case: its body reports through compare() and fail(); exceptions fail it.
class Case {
 public:
  Case(std::string name, double tolerance) {
    res_.name = std::move(name);
    res_.tolerance = tolerance;
  }
  void compare(const char* what, const Tensor& gpu, const Tensor& cpu) {
    const double e = relative_error(gpu.to_floats(), cpu.to_floats());
    errors_ += std::string(errors_.empty() ? "" : ", ") + what + " " + format(e);
    if (!(e <= res_.error) || worst_.empty()) {  // NaN propagates
      res_.error = e;
      worst_ = what;
    }
  }
  void fail(const std::string& why) { failure_ = why; }
  CheckResult run(const std::function<void()>& body) {
    try {
      body();
      res_.ok = failure_.empty() && res_.error <= res_.tolerance;
      res_.detail = failure_.empty() ? "worst: " + worst_ + " (" + errors_ + ")" : failure_;
    } catch (const std::exception& e) {
      res_.ok = false;
      res_.detail = e.what();
    }
    return res_;
  }

 private:
  static std::string format(double e) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2e", e);
    return buf;
  }
  CheckResult res_;
  std::string worst_, errors_, failure_;
};

// ---- rmsnorm ------------------------------------------------------------------
// Fused residual forward, plain forward and backward (with dresidual, dw
// accumulated onto random values). in_place: residual_out = residual and
// dx = dresidual on the GPU.
CheckResult check_rmsnorm(int64_t rows, int64_t d, DType act, DType wt, bool in_place) {
  Case c("rmsnorm " + std::string(dtype_name(act)) + " w " + std::string(dtype_name(wt)) + " " + dims({rows, d}) +
             (in_place ? " in place" : ""),
         tolerance_for(act));
  return c.run([&] {
    const float eps = 1e-5f;
    const Tensor r = random_tensor({rows, d}, act, 11, 1.0f, 0.1f), b = random_tensor({rows, d}, act, 12);
    const Tensor w = random_tensor({d}, wt, 13, 0.5f, 1.0f), dy = random_tensor({rows, d}, act, 14);
    const Tensor dres = random_tensor({rows, d}, act, 15), dw0 = random_tensor({d}, DType::f32, 16);
    struct Out {
      Tensor rnew, y, rstd, y2, rstd2, dx, dw;
    };
    auto run = [&](Device dev) {
      Out o;
      const Tensor rd = r.to(dev), bd = b.to(dev), wd = w.to(dev), dyd = dy.to(dev);
      o.rstd = Tensor::empty({rows}, DType::f32, dev);
      o.rstd2 = Tensor::empty({rows}, DType::f32, dev);
      o.y = Tensor::empty({rows, d}, act, dev);
      o.y2 = Tensor::empty({rows, d}, act, dev);
      o.dw = clone(dw0.to(dev));
      const bool inplace = in_place && dev == Device::cuda;
      o.rnew = inplace ? clone(rd) : Tensor::empty({rows, d}, act, dev);
      residual_rmsnorm_forward(inplace ? o.rnew : rd, bd, wd, eps, o.rnew, o.y, o.rstd);
      rmsnorm_forward(o.rnew, wd, eps, o.y2, o.rstd2);
      const Tensor dresd = clone(dres.to(dev));
      o.dx = inplace ? dresd : Tensor::empty({rows, d}, act, dev);
      rmsnorm_backward(dyd, o.rnew, wd, o.rstd, &dresd, o.dx, o.dw);
      return o;
    };
    const Out g = run(Device::cuda), h = run(Device::cpu);
    c.compare("residual", g.rnew, h.rnew);
    c.compare("y", g.y, h.y);
    c.compare("rstd", g.rstd, h.rstd);
    c.compare("y (unfused)", g.y2, h.y2);
    c.compare("rstd (unfused)", g.rstd2, h.rstd2);
    c.compare("dx", g.dx, h.dx);
    c.compare("dw", g.dw, h.dw);
    // The fused and plain forwards agree exactly on the GPU too.
    if (g.y.to_floats() != g.y2.to_floats() || g.rstd.to_floats() != g.rstd2.to_floats())
      c.fail("fused and plain forward differ on the GPU");
  });
}

// ---- swiglu -------------------------------------------------------------------
// view_offset: inputs are rows [1, rows] of a [rows + 1, cols] tensor, i.e.
// misaligned when cols * size is not a multiple of 16 (the element-wise path).
CheckResult check_swiglu(int64_t rows, int64_t cols, DType act, bool view_offset, bool in_place) {
  Case c("swiglu " + std::string(dtype_name(act)) + " " + dims({rows, cols}) + (view_offset ? " offset view" : "") +
             (in_place ? " in place" : ""),
         tolerance_for(act));
  return c.run([&] {
    auto input = [&](uint64_t seed, float stddev) {
      const Tensor t = random_tensor({rows + (view_offset ? 1 : 0), cols}, act, seed, stddev);
      return view_offset ? t.rows(1, rows) : t;
    };
    const Tensor g = input(21, 2.0f), u = input(22, 1.0f), dh = input(23, 1.0f);
    auto run = [&](Device dev, Tensor& h, Tensor& dg, Tensor& du) {
      const Tensor gd = g.to(dev), ud = u.to(dev), dhd = dh.to(dev);
      h = Tensor::empty({rows, cols}, act, dev);
      swiglu_forward(gd, ud, h);
      const bool inplace = in_place && dev == Device::cuda;
      Tensor g2 = clone(gd), u2 = clone(ud);  // in place: dg over g, du over u
      dg = inplace ? g2 : Tensor::empty({rows, cols}, act, dev);
      du = inplace ? u2 : Tensor::empty({rows, cols}, act, dev);
      swiglu_backward(dhd, g2, u2, dg, du);
    };
    Tensor gh, gdg, gdu, ch, cdg, cdu;
    run(Device::cuda, gh, gdg, gdu);
    run(Device::cpu, ch, cdg, cdu);
    c.compare("h", gh, ch);
    c.compare("dg", gdg, cdg);
    c.compare("du", gdu, cdu);
  });
}

// The fused gate|up layout: gu [rows, 2F] -> h [rows, F]; backward into a
// separate dgu, and (GPU, in_place) over gu itself.
CheckResult check_swiglu_fused(int64_t rows, int64_t F, DType act, bool in_place) {
  Case c("swiglu fused " + std::string(dtype_name(act)) + " " + dims({rows, 2 * F}) + (in_place ? " in place" : ""),
         tolerance_for(act));
  return c.run([&] {
    const Tensor gu = random_tensor({rows, 2 * F}, act, 24, 1.5f), dh = random_tensor({rows, F}, act, 25);
    auto run = [&](Device dev, Tensor& h, Tensor& dgu) {
      const Tensor gud = gu.to(dev), dhd = dh.to(dev);
      h = Tensor::empty({rows, F}, act, dev);
      swiglu_forward_fused(gud, h);
      const bool inplace = in_place && dev == Device::cuda;
      Tensor gu2 = clone(gud);
      dgu = inplace ? gu2 : Tensor::empty({rows, 2 * F}, act, dev);
      swiglu_backward_fused(dhd, gu2, dgu);
    };
    Tensor gh, gdgu, ch, cdgu;
    run(Device::cuda, gh, gdgu);
    run(Device::cpu, ch, cdgu);
    c.compare("h", gh, ch);
    c.compare("dgu", gdgu, cdgu);
  });
}

// ---- embedding ----------------------------------------------------------------
// Skewed ids (many repeats); with bad_ids two tokens carry -1 and vocab: the
// GPU must write NaN rows for them and skip them in the backward.
CheckResult check_embedding(int64_t vocab, int64_t d, int64_t tokens, DType table_dt, DType act, bool bad_ids,
                            bool random_dtable) {
  Case c("embedding table " + std::string(dtype_name(table_dt)) + " out " + std::string(dtype_name(act)) + " " +
             dims({vocab, d}) + " " + std::to_string(tokens) + " tokens" + (bad_ids ? " bad ids" : ""),
         0.0);
  return c.run([&] {
    Tensor ids = Tensor::empty({tokens}, DType::i32), ids_ok = Tensor::empty({tokens}, DType::i32);
    for (int64_t t = 0; t < tokens; ++t) {
      const float u = uniform01(31, 0, t);
      ids_ok.data_as<int32_t>()[t] = static_cast<int32_t>(static_cast<float>(vocab) * u * u * u) % vocab;
    }
    ids.copy_from(ids_ok);
    const Tensor table = random_tensor({vocab, d}, table_dt, 32), dout = random_tensor({tokens, d}, act, 33);
    Tensor dout_ok = clone(dout);  // the CPU reference: bad tokens point at row 0 with a zero gradient
    std::vector<int64_t> bad;
    if (bad_ids && tokens >= 3) {
      bad = {1, tokens - 1};
      ids.data_as<int32_t>()[1] = -1;
      ids.data_as<int32_t>()[tokens - 1] = static_cast<int32_t>(vocab);
      for (int64_t t : bad) {
        ids_ok.data_as<int32_t>()[t] = 0;
        std::memset(static_cast<char*>(dout_ok.data()) + t * d * dtype_size(act), 0, d * dtype_size(act));
      }
    }
    const Tensor dtable0 = random_dtable ? random_tensor({vocab, d}, DType::f32, 34, 0.1f)
                                         : Tensor::zeros({vocab, d}, DType::f32);
    // GPU (backward twice from the same start: must be bit-identical)
    const Tensor ids_g = ids.to(Device::cuda), table_g = table.to(Device::cuda), dout_g = dout.to(Device::cuda);
    Tensor out_g = Tensor::empty({tokens, d}, act, Device::cuda);
    embedding_forward(ids_g, table_g, out_g);
    Tensor dt_g = clone(dtable0.to(Device::cuda)), dt_g2 = clone(dt_g);
    Tensor rows_g = Tensor::zeros({vocab}, DType::i8, Device::cuda);
    embedding_backward(ids_g, dout_g, dt_g, &rows_g);
    embedding_backward(ids_g, dout_g, dt_g2);
    // CPU
    Tensor out_c = Tensor::empty({tokens, d}, act), dt_c = clone(dtable0);
    embedding_forward(ids_ok, table, out_c);
    embedding_backward(ids_ok, dout_ok, dt_c);

    Tensor out_h = out_g.to(Device::cpu);
    for (int64_t t : bad) {  // NaN rows expected; set them to the CPU's to compare the rest
      for (int64_t j = 0; j < d; ++j)
        if (!std::isnan(load_float(out_h.data(), act, t * d + j))) c.fail("token with a bad id: row not NaN");
      std::memcpy(static_cast<char*>(out_h.data()) + t * d * dtype_size(act),
                  static_cast<const char*>(out_c.data()) + t * d * dtype_size(act), d * dtype_size(act));
    }
    c.compare("out", out_h, out_c);
    c.compare("dtable", dt_g, dt_c);
    if (dt_g.to_floats() != dt_g2.to_floats()) c.fail("backward not deterministic: two runs differ");

    // Rows written: exactly the valid ids; clearing them (GPU and CPU, the same
    // flags) zeroes those rows only and every flag.
    std::vector<int8_t> want(static_cast<size_t>(vocab), 0);
    for (int64_t t = 0; t < tokens; ++t) {
      const int32_t id = ids.data_as<int32_t>()[t];
      if (id >= 0 && id < vocab) want[static_cast<size_t>(id)] = 1;
    }
    Tensor rows_c = rows_g.to(Device::cpu);
    if (std::memcmp(rows_c.data(), want.data(), want.size()) != 0) c.fail("rows_written: not the batch's ids");
    embedding_grad_clear(dt_g, rows_g);
    embedding_grad_clear(dt_c, rows_c);
    c.compare("dtable after clear", dt_g, dt_c);
    const std::vector<float> cleared = dt_c.to_floats(), start = dtable0.to_floats();
    for (int64_t r = 0; r < vocab; ++r)
      for (int64_t j = 0; j < d; ++j) {
        const size_t i = static_cast<size_t>(r * d + j);
        if (cleared[i] != (want[static_cast<size_t>(r)] ? 0.0f : start[i])) {
          c.fail("embedding_grad_clear: row " + std::to_string(r) + " wrong");
          r = vocab;
          break;
        }
      }
    const Tensor flags_after = rows_g.to(Device::cpu);
    for (int64_t r = 0; r < vocab; ++r)
      if (flags_after.data_as<int8_t>()[r] != 0 || rows_c.data_as<int8_t>()[r] != 0) {
        c.fail("embedding_grad_clear: flags left set");
        break;
      }
  });
}

// ---- rope ---------------------------------------------------------------------
// Packed documents: positions restart at 0 at random document boundaries
// (offset: added to every position, to reach large angles).
Tensor packed_positions(int64_t tokens, int64_t max_doc, int32_t offset, uint64_t seed) {
  Tensor p = Tensor::empty({tokens}, DType::i32);
  int32_t pos = 0, len = 1;
  for (int64_t t = 0, k = 0; t < tokens; ++t, ++pos) {
    if (pos == len) {
      pos = 0;
      len = 1 + static_cast<int32_t>(uniform01(seed, 1, k++) * static_cast<float>(max_doc));
    }
    p.data_as<int32_t>()[t] = pos + offset;
  }
  return p;
}

Tensor inv_freq_table(int64_t D, double theta) {
  Tensor f = Tensor::empty({D / 2}, DType::f32);
  for (int64_t i = 0; i < D / 2; ++i)
    f.data_as<float>()[i] = static_cast<float>(1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / D));
  return f;
}

CheckResult check_rope(int64_t tokens, int64_t heads, int64_t D, DType act, int64_t max_doc, int32_t offset) {
  Case c("rope " + std::string(dtype_name(act)) + " " + dims({tokens, heads, D}) +
             (offset ? " positions from " + std::to_string(offset) : ""),
         act == DType::bf16 ? kBf16Tolerance : kRopeF32Tolerance);
  return c.run([&] {
    const Tensor x = random_tensor({tokens, heads, D}, act, 41), dy = random_tensor({tokens, heads, D}, act, 42);
    const Tensor pos = packed_positions(tokens, max_doc, offset, 43), f = inv_freq_table(D, 500000.0);
    auto run = [&](Device dev, Tensor& y, Tensor& dx) {
      const Tensor pd = pos.to(dev), fd = f.to(dev);
      y = clone(x.to(dev));
      rope_forward(y, pd, fd);
      dx = clone(dy.to(dev));
      rope_backward(dx, pd, fd);
    };
    Tensor gy, gdx, cy, cdx;
    run(Device::cuda, gy, gdx);
    run(Device::cpu, cy, cdx);
    c.compare("forward", gy, cy);
    c.compare("backward", gdx, cdx);
    // Between columns of two tensors, as from and into a fused q|k|v [tokens, 2 heads D + 8].
    const int64_t W = heads * D, C = 2 * W + 8;
    const Tensor qkv = random_tensor({tokens, C}, act, 44), g = random_tensor({tokens, W}, act, 45);
    auto run_cols = [&](Device dev, Tensor& k, Tensor& dqkv) {
      const Tensor pd = pos.to(dev), fd = f.to(dev);
      k = Tensor::empty({tokens, W}, act, dev);
      rope_forward(qkv.to(dev), W, k, 0, W, pd, fd);
      dqkv = clone(qkv.to(dev));
      rope_backward(g.to(dev), 0, dqkv, W, W, pd, fd);
    };
    Tensor gk, gq, ck, cq;
    run_cols(Device::cuda, gk, gq);
    run_cols(Device::cpu, ck, cq);
    c.compare("forward from columns", gk, ck);
    c.compare("backward into columns", gq, cq);
  });
}

}  // namespace

std::vector<CheckResult> rowops_cuda_checks(bool full) {
  std::vector<CheckResult> out;
  const DType bf = DType::bf16, f32 = DType::f32;
  // rmsnorm: 16-byte path, element path (d % 8 != 0), f32 activations, 1024-thread rows.
  out.push_back(check_rmsnorm(37, 96, bf, f32, false));
  out.push_back(check_rmsnorm(37, 96, bf, bf, true));
  out.push_back(check_rmsnorm(19, 100, bf, f32, false));
  out.push_back(check_rmsnorm(23, 264, f32, bf, false));
  out.push_back(check_rmsnorm(5, 16384, bf, f32, false));
  out.push_back(check_swiglu(33, 200, bf, false, false));
  out.push_back(check_swiglu(7, 13, bf, false, true));
  out.push_back(check_swiglu(8, 13, bf, true, false));
  out.push_back(check_swiglu(5, 40, f32, false, false));
  out.push_back(check_swiglu_fused(33, 160, bf, false));  // 16-byte path
  out.push_back(check_swiglu_fused(33, 160, bf, true));
  out.push_back(check_swiglu_fused(9, 13, bf, true));     // F % 8 != 0: element path
  out.push_back(check_swiglu_fused(9, 24, f32, false));
  out.push_back(check_embedding(50, 64, 300, bf, bf, false, true));
  out.push_back(check_embedding(50, 64, 300, f32, bf, true, true));
  out.push_back(check_embedding(40, 20, 77, bf, f32, true, true));
  out.push_back(check_rope(37, 4, 16, bf, 10, 0));
  out.push_back(check_rope(37, 2, 16, bf, 10, 0));
  out.push_back(check_rope(29, 5, 128, f32, 12, 0));
  out.push_back(check_rope(29, 3, 12, f32, 12, 0));
  out.push_back(check_rope(16, 4, 128, f32, 1000, 200000));  // |angle| > 1e5: the slow range reduction
  if (full) {
    out.push_back(check_rmsnorm(8192, 4096, bf, f32, false));
    out.push_back(check_rmsnorm(8192, 2048, bf, bf, true));
    out.push_back(check_swiglu(8192, 14336, bf, false, false));
    out.push_back(check_swiglu_fused(8192, 14336, bf, true));
    out.push_back(check_embedding(128256, 4096, 8192, bf, bf, false, false));
    out.push_back(check_rope(8192, 32, 128, bf, 4096, 0));
    out.push_back(check_rope(8192, 8, 128, bf, 4096, 0));
  }
  return out;
}
#else
std::vector<CheckResult> rowops_cuda_checks(bool) { return {}; }
#endif

}  // namespace halo
