// The CUDA attention against its CPU twin on the same inputs: q, k, v and dout
// are normal values rounded to bf16, given as bf16 to the GPU and as the same
// values in f32 to the CPU; each side runs its own forward and backward.
//
// Tolerances (relative_error = ||gpu - cpu|| / ||cpu|| per tensor):
//   out        1e-2: the GPU rounds P to bf16 before P V and rounds out to bf16;
//              each is a relative error of at most 2^-9 (rms ~1.1e-3), so about
//              2e-3 is expected (the CPU emulation of the kernels measures 1.7e-3
//              to 1.9e-3).
//   lse        1e-4: f32 on both sides from identical inputs (S in f32 from exact
//              bf16 products; measured ~5e-8).
//   dq, dk, dv 2e-2: P and dS are rounded to bf16 before their matmuls, Dvec is
//              computed from the bf16 out, and the results are rounded to bf16:
//              about 3e-3 is expected.
// A case's `error` is the worst ratio of a tensor's relative error to its
// tolerance (so `tolerance` is 1); `detail` lists every tensor's error.
#include <cstdio>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/selfcheck.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace {

struct Case {
  int64_t B, T, Hq, Hkv, D;
  std::vector<int64_t> doc_lens;  // lengths of the documents of each row (repeated); empty: none
  float scale = 0.0f;
};

Tensor random_bf16(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::bf16);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), DType::bf16, i, normal01(seed, 0, i));
  return t;
}

// Document ids: each row split into documents of the given lengths (cycled); ids
// grow along the row.
Tensor make_docs(const Case& c) {
  Tensor d = Tensor::empty({c.B * c.T}, DType::i32);
  int32_t* p = d.data_as<int32_t>();
  for (int64_t b = 0; b < c.B; ++b) {
    int64_t t = 0, n = 0;
    int32_t id = 0;
    while (t < c.T) {
      const int64_t len = c.doc_lens[n++ % c.doc_lens.size()];
      for (int64_t u = 0; u < len && t < c.T; ++u) p[b * c.T + t++] = id;
      id += 2;
    }
  }
  return d;
}

std::string case_name(const Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "attention B%lld T%lld Hq%lld Hkv%lld D%lld%s%s", static_cast<long long>(c.B),
                static_cast<long long>(c.T), static_cast<long long>(c.Hq), static_cast<long long>(c.Hkv),
                static_cast<long long>(c.D), c.doc_lens.empty() ? "" : " docs", c.scale != 0.0f ? " scale" : "");
  return buf;
}

// out, lse, dq, dk, dv as floats after forward and backward on `device`.
std::vector<std::vector<float>> run(Device device, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& dout, const Tensor& docs, const Case& c) {
  const DType dt = device == Device::cuda ? DType::bf16 : DType::f32;
  auto put = [&](const Tensor& t) { return t.to(dt).to(device); };
  const Tensor qd = put(q), kd = put(k), vd = put(v), dod = put(dout);
  AttentionOptions opt;
  opt.batch = c.B;
  opt.scale = c.scale;
  if (docs.defined()) opt.doc_ids = docs.to(device);
  Tensor out = Tensor::empty(q.shape(), dt, device), lse = Tensor::empty({q.size(0), c.Hq}, DType::f32, device);
  attention_forward(qd, kd, vd, opt, out, lse);
  Tensor dq = Tensor::empty(q.shape(), dt, device), dk = Tensor::empty(k.shape(), dt, device),
         dv = Tensor::empty(v.shape(), dt, device);
  attention_backward(qd, kd, vd, out, lse, dod, opt, dq, dk, dv);
  return {out.to_floats(), lse.to_floats(), dq.to_floats(), dk.to_floats(), dv.to_floats()};
}

}  // namespace

std::vector<CheckResult> attention_cuda_checks(bool full) {
  std::vector<Case> cases;
  for (int64_t T : {1, 17, 128, 300})
    for (int64_t D : {64, 128})
      for (int64_t group : {1, 4})
        for (bool docs : {false, true})
          cases.push_back({T > 128 ? 1 : 2, T, 2 * group, 2, D,
                           docs ? std::vector<int64_t>{5, 40, 1, 70} : std::vector<int64_t>{}, 0.0f});
  // Head dims off the fast paths (padded to 64, 128 or 256) and a given scale.
  cases.push_back({1, 200, 4, 2, 256, {77, 3, 50}, 0.0f});
  cases.push_back({1, 130, 2, 1, 72, {}, 0.0f});
  cases.push_back({2, 70, 4, 2, 40, {3, 20}, 0.3f});
  cases.push_back({1, 100, 3, 1, 192, {9, 33}, 0.0f});
  if (full) {
    cases.push_back({4, 2048, 32, 8, 128, {}, 0.0f});
    cases.push_back({1, 8192, 32, 8, 128, {3000, 1500, 2692, 1000}, 0.0f});
    cases.push_back({4, 2048, 32, 8, 64, {700, 1348}, 0.0f});
  }
  const char* names[] = {"out", "lse", "dq", "dk", "dv"};
  const double tol[] = {1e-2, 1e-4, 2e-2, 2e-2, 2e-2};
  std::vector<CheckResult> results;
  uint64_t seed = 100;
  for (const Case& c : cases) {
    CheckResult res;
    res.name = case_name(c);
    res.tolerance = 1.0;
    try {
      const Tensor q = random_bf16({c.B * c.T, c.Hq, c.D}, seed++), k = random_bf16({c.B * c.T, c.Hkv, c.D}, seed++),
                   v = random_bf16({c.B * c.T, c.Hkv, c.D}, seed++), dout = random_bf16({c.B * c.T, c.Hq, c.D}, seed++);
      const Tensor docs = c.doc_lens.empty() ? Tensor() : make_docs(c);
      const auto gpu = run(Device::cuda, q, k, v, dout, docs, c);
      const auto cpu = run(Device::cpu, q, k, v, dout, docs, c);
      res.error = 0.0;
      for (int i = 0; i < 5; ++i) {
        const double e = relative_error(gpu[i], cpu[i]);
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s%s %.2e (tol %.0e)", i ? ", " : "", names[i], e, tol[i]);
        res.detail += buf;
        const double ratio = e / tol[i];
        if (!(ratio <= res.error)) res.error = ratio;  // NaN propagates
      }
      res.ok = res.error <= res.tolerance;
    } catch (const std::exception& e) {
      res.detail = e.what();
    }
    results.push_back(res);
  }
  return results;
}
#else
std::vector<CheckResult> attention_cuda_checks(bool) { return {}; }
#endif

}  // namespace halo
