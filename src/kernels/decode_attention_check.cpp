// The CUDA decoding kernels against their CPU twins (decode_attention.h) on
// the same random inputs: bf16 values, given as bf16 to the GPU and as the
// same values in f32 to the CPU.
//
// Tolerances:
//   decode_attention  relative error 5e-3: both sides compute in f32 from the
//                     same values; the GPU's order of sums differs (chunks,
//                     warps) and it rounds out to bf16 (at most 2^-9 relative
//                     per element, rms ~1.1e-3).
//   kv_cache_append   exact (a copy; the untouched cache entries are compared too).
//   argmax_rows       exact: the same values and the same rule (ties to the
//                     lowest index, NaN as -inf); rows with planted ties,
//                     NaN and all -inf.
// `full` adds longer caches at Llama 3 8B's shape (32 heads, 8 kv heads, D 128).
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/decode_attention.h"
#include "kernels/selfcheck.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace {

Tensor random_bf16(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::bf16);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), DType::bf16, i, normal01(seed, 0, i));
  return t;
}

Tensor ints(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  for (size_t i = 0; i < v.size(); ++i) t.data_as<int32_t>()[i] = v[i];
  return t;
}

CheckResult run_case(const std::string& name, double tolerance, const std::function<double(std::string&)>& body) {
  CheckResult r;
  r.name = name;
  r.tolerance = tolerance;
  try {
    r.error = body(r.detail);
    r.ok = r.error <= r.tolerance;  // NaN fails
  } catch (const std::exception& e) {
    r.detail = e.what();
  }
  return r;
}

struct AttnCase {
  int64_t n, S, Tmax, Hq, Hkv, D;
  bool one_sequence = false;  // every query from sequence 0 with lengths Tmax - n + 1 .. Tmax (a prompt)
};

CheckResult attention_case(const AttnCase& c, uint64_t seed) {
  char name[160];
  std::snprintf(name, sizeof name, "decode_attention n%lld S%lld T%lld Hq%lld Hkv%lld D%lld%s",
                static_cast<long long>(c.n), static_cast<long long>(c.S), static_cast<long long>(c.Tmax),
                static_cast<long long>(c.Hq), static_cast<long long>(c.Hkv), static_cast<long long>(c.D),
                c.one_sequence ? " prompt" : "");
  return run_case(name, 5e-3, [&](std::string& detail) {
    const Tensor q = random_bf16({c.n, c.Hq, c.D}, seed), k = random_bf16({c.S, c.Tmax, c.Hkv, c.D}, seed + 1),
                 v = random_bf16({c.S, c.Tmax, c.Hkv, c.D}, seed + 2);
    std::vector<int32_t> seq(c.n), len(c.n);
    int64_t max_len = 1;
    for (int64_t i = 0; i < c.n; ++i) {
      if (c.one_sequence) {
        seq[i] = 0;
        len[i] = static_cast<int32_t>(c.Tmax - c.n + 1 + i);
      } else {
        seq[i] = static_cast<int32_t>(std::min<int64_t>(c.S - 1, uniform01(seed, 3, i) * c.S));
        len[i] = i == 0 ? static_cast<int32_t>(c.Tmax)  // one full cache
                        : 1 + static_cast<int32_t>(std::min<int64_t>(c.Tmax - 1, uniform01(seed, 4, i) * c.Tmax));
      }
      max_len = std::max<int64_t>(max_len, len[i]);
    }
    const auto run = [&](Device dev) {
      const DType dt = dev == Device::cuda ? DType::bf16 : DType::f32;
      Tensor out = Tensor::empty(q.shape(), dt, dev);
      decode_attention(q.to(dt).to(dev), k.to(dt).to(dev), v.to(dt).to(dev), ints(seq).to(dev), ints(len).to(dev),
                       max_len, out);
      return out.to_floats();
    };
    const double e = relative_error(run(Device::cuda), run(Device::cpu));
    char buf[64];
    std::snprintf(buf, sizeof buf, "out %.2e, max_len %lld", e, static_cast<long long>(max_len));
    detail = buf;
    return e;
  });
}

CheckResult append_case(int64_t n, int64_t S, int64_t Tmax, int64_t Hkv, int64_t D, DType dt, uint64_t seed) {
  char name[160];
  std::snprintf(name, sizeof name, "kv_cache_append %s n%lld S%lld T%lld Hkv%lld D%lld",
                std::string(dtype_name(dt)).c_str(), static_cast<long long>(n), static_cast<long long>(S),
                static_cast<long long>(Tmax), static_cast<long long>(Hkv), static_cast<long long>(D));
  return run_case(name, 0.0, [&](std::string& detail) {
    const Tensor x = random_bf16({n, Hkv, D}, seed).to(dt), cache0 = random_bf16({S, Tmax, Hkv, D}, seed + 1).to(dt);
    std::vector<int32_t> seq(n), pos(n);
    for (int64_t i = 0; i < n; ++i) {  // distinct (seq, pos): row i goes to slot i of a shuffled walk
      const int64_t slot = (i * 7919) % (S * Tmax);
      seq[i] = static_cast<int32_t>(slot / Tmax);
      pos[i] = static_cast<int32_t>(slot % Tmax);
    }
    const auto run = [&](Device dev) {
      Tensor cache = cache0.to(dev);
      kv_cache_append(x.to(dev), ints(seq).to(dev), ints(pos).to(dev), cache);
      return cache.to_floats();
    };
    const std::vector<float> g = run(Device::cuda), c = run(Device::cpu);
    int64_t wrong = 0;
    for (size_t i = 0; i < g.size(); ++i) wrong += g[i] != c[i];
    detail = std::to_string(wrong) + " of " + std::to_string(g.size()) + " elements differ";
    return static_cast<double>(wrong);
  });
}

CheckResult argmax_case(int64_t rows, int64_t V, DType dt, uint64_t seed) {
  char name[160];
  std::snprintf(name, sizeof name, "argmax_rows %s %lldx%lld", std::string(dtype_name(dt)).c_str(),
                static_cast<long long>(rows), static_cast<long long>(V));
  return run_case(name, 0.0, [&](std::string& detail) {
    Tensor x = Tensor::empty({rows, V}, dt);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < V; ++j) {
        // Values on a coarse grid so that maxima tie; row 1 all -inf, row 2 with NaNs.
        float v = std::round(4.0f * normal01(seed, r, j)) / 4.0f;
        if (r == 1) v = -std::numeric_limits<float>::infinity();
        if (r == 2 && j % 5 == 0) v = std::numeric_limits<float>::quiet_NaN();
        store_float(x.data(), dt, r * V + j, v);
      }
    const auto run = [&](Device dev) {
      Tensor out = Tensor::empty({rows}, DType::i32, dev);
      argmax_rows(x.to(dev), out);
      return out.to(Device::cpu);
    };
    const Tensor g = run(Device::cuda), c = run(Device::cpu);
    int64_t wrong = 0;
    for (int64_t r = 0; r < rows; ++r) wrong += g.data_as<int32_t>()[r] != c.data_as<int32_t>()[r];
    detail = std::to_string(wrong) + " of " + std::to_string(rows) + " rows differ";
    return static_cast<double>(wrong);
  });
}

}  // namespace

std::vector<CheckResult> decode_cuda_checks(bool full) {
  std::vector<AttnCase> cases = {
      {1, 1, 1, 2, 2, 64},      {3, 4, 37, 4, 2, 64},    {5, 3, 300, 9, 3, 64},  // SmolLM2-135M's heads
      {2, 2, 130, 6, 1, 128},   {4, 4, 50, 16, 1, 72},   {2, 2, 77, 4, 4, 256},
      {3, 2, 40, 8, 8, 40},     {17, 1, 60, 4, 2, 64, true},
      {4, 4, 1024, 32, 8, 128},  // Llama 3 8B's heads
  };
  if (full) {
    cases.push_back({1, 1, 8192, 32, 8, 128});
    cases.push_back({16, 16, 2048, 32, 8, 128});
    cases.push_back({8, 8, 4096, 32, 32, 128});  // Llama 2 7B (no GQA)
    cases.push_back({64, 1, 2048, 32, 8, 128, true});
  }
  std::vector<CheckResult> results;
  uint64_t seed = 700;
  for (const AttnCase& c : cases) results.push_back(attention_case(c, seed += 10));
  results.push_back(append_case(1, 1, 1, 2, 64, DType::bf16, seed += 10));
  results.push_back(append_case(19, 3, 40, 3, 64, DType::bf16, seed += 10));
  results.push_back(append_case(7, 2, 11, 1, 36, DType::bf16, seed += 10));  // rows of 72 bytes: 2-byte copies
  results.push_back(append_case(7, 2, 11, 1, 36, DType::f32, seed += 10));
  results.push_back(append_case(64, 8, 512, 8, 128, DType::bf16, seed += 10));
  results.push_back(argmax_case(5, 256, DType::f32, seed += 10));
  results.push_back(argmax_case(5, 49152, DType::bf16, seed += 10));
  results.push_back(argmax_case(9, 128256, DType::bf16, seed += 10));
  results.push_back(argmax_case(4, 128256, DType::f32, seed += 10));
  if (full) results.push_back(argmax_case(256, 128256, DType::bf16, seed += 10));
  return results;
}
#else
std::vector<CheckResult> decode_cuda_checks(bool) { return {}; }
#endif

}  // namespace halo
