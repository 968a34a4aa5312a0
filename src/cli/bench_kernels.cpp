// halo bench kernels: the memory-bound kernels against the device's copy
// bandwidth, and the GEMMs per format, in one run.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "kernels/gemm.h"
#include "kernels/hadamard.h"
#include "kernels/quantize.h"

namespace halo::cli {

namespace {

double median_ms(Device device, int warmup, int iters, const std::function<void()>& work) {
  DeviceTimer timer(device);
  std::vector<double> ms;
  for (int i = 0; i < warmup + iters; ++i) {
    timer.start();
    work();
    timer.stop();
    if (i >= warmup) ms.push_back(timer.milliseconds());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

Tensor random_tensor(const Shape& shape, DType dtype, Device device, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) store_float(t.data(), dtype, i, normal01(seed, 0, i));
  return t.to(device);
}

}  // namespace

int bench_kernels(const std::vector<std::string>& argv) {
  Args args(argv, {});
  args.check_all_used({"device", "shape", "warmup", "iters"});
  const Device device = args.get("device", cuda_available() ? "cuda" : "cpu") == "cuda" ? Device::cuda : Device::cpu;
  HALO_CHECK(device == Device::cpu || cuda_available(), "--device cuda: no usable CUDA device");
  const auto shape = parse_int_list(args.get("shape", device == Device::cuda ? "8192,4096,4096" : "512,1024,1024"),
                                    "shape");
  HALO_CHECK(shape.size() == 3, "--shape: expected M,N,K");
  const int64_t M = shape[0], N = shape[1], K = shape[2];
  const int warmup = static_cast<int>(args.get_int("warmup", device == Device::cuda ? 10 : 1));
  const int iters = static_cast<int>(args.get_int("iters", device == Device::cuda ? 50 : 3));
  const DType act = device == Device::cuda ? DType::bf16 : DType::f32;

  std::printf("halo bench kernels: %s, M=%lld N=%lld K=%lld, median of %d after %d warm-up\n",
              device == Device::cuda ? "cuda" : "cpu", static_cast<long long>(M), static_cast<long long>(N),
              static_cast<long long>(K), iters, warmup);
  std::printf("%-52s %10s %10s %8s\n", "kernel", "ms", "GB/s", "% copy");

  // Memory-bound kernels on X [M, K]; bytes = what the kernel must read + write at least.
  const Tensor x = random_tensor({M, K}, act, device, 1);
  Tensor y = Tensor::empty({M, K}, act, device);
  const double elems = static_cast<double>(M) * K, esize = static_cast<double>(dtype_size(act));
  const double copy_ms = median_ms(device, warmup, iters, [&] { y.copy_from(x); });
  const double copy_gbs = 2 * elems * esize / (copy_ms * 1e6);
  auto report = [&](const std::string& name, double ms, double bytes) {
    const double gbs = bytes / (ms * 1e6);
    std::printf("%-52s %10.4f %10.1f %7.1f%%\n", name.c_str(), ms, gbs, 100.0 * gbs / copy_gbs);
  };
  report("copy " + std::string(dtype_name(act)), copy_ms, 2 * elems * esize);
  report("hadamard_rows (x R)", median_ms(device, warmup, iters, [&] { hadamard_rows(x, y); }), 2 * elems * esize);
  report("hadamard_cols (R^T x, token dim)", median_ms(device, warmup, iters, [&] { hadamard_cols(x, y); }),
         2 * elems * esize);
  for (DType q : {DType::e4m3, DType::i8}) {
    for (Granularity g : {Granularity::tensor, Granularity::row}) {
      QuantSpec spec;
      spec.dtype = q;
      spec.granularity = g;
      for (bool rotate : {false, true}) {
        QTensor out, out_t;
        const std::string base = std::string("quantize ") + dtype_name(q).data() + " " +
                                 granularity_name(g).data() + (rotate ? " +rotate" : "");
        report(base, median_ms(device, warmup, iters, [&] { quantize(x, spec, rotate, &out, nullptr); }),
               elems * (esize + 1));
        report(base + " +transposed copy",
               median_ms(device, warmup, iters, [&] { quantize(x, spec, rotate, &out, &out_t); }),
               elems * (esize + 2));
      }
    }
  }

  // GEMMs at M x N x K: D[M, N] = A[M, K] B[N, K]^T.
  std::printf("%-52s %10s %10s %8s\n", "gemm", "ms", "TFLOP/s", "x bf16");
  const double flops = 2.0 * M * N * K;
  const Tensor a = random_tensor({M, K}, act, device, 2), b = random_tensor({N, K}, act, device, 3);
  Tensor d = Tensor::empty({M, N}, act, device);
  const double bf16_ms = median_ms(device, warmup, iters, [&] { gemm_nt(a, b, d); });
  const auto gemm_row = [&](const std::string& name, double ms) {
    std::printf("%-52s %10.4f %10.1f %7.2fx\n", (name + " -> " + dtype_name(act).data()).c_str(), ms,
                flops / (ms * 1e9), bf16_ms / ms);
  };
  gemm_row(std::string(dtype_name(act)), bf16_ms);
  for (DType q : {DType::e4m3, DType::i8}) {
    for (Granularity g : {Granularity::tensor, Granularity::row, Granularity::block1x128}) {
      if (q == DType::i8 && g == Granularity::block1x128) continue;
      QuantSpec spec;
      spec.dtype = q;
      spec.granularity = g;
      QTensor qa, qb;
      quantize(a, spec, false, &qa, nullptr);
      quantize(b, spec, false, &qb, nullptr);
      // FP8 on the GPU also without cuBLASLt's periodic promotion (the FP8 recipes' default).
      for (bool fast : {false, true}) {
        if (fast && (q != DType::e4m3 || g == Granularity::block1x128 || device != Device::cuda)) continue;
        GemmOptions opt;
        opt.fast_accum = fast;
        const double ms = median_ms(device, warmup, iters, [&] { gemm_nt(qa, qb, d, opt); });
        gemm_row(std::string(dtype_name(q)) + " " + granularity_name(g).data() + (fast ? " fastacc" : ""), ms);
      }
      // INT8 on the GPU also as cuBLASLt's int32 product and the separate scaling pass
      // (what runs where the fused Hopper kernel does not).
      if (q == DType::i8 && device == Device::cuda) {
        Tensor acc = Tensor::empty({M, N}, DType::i32, device);
        const double ms = median_ms(device, warmup, iters, [&] {
          gemm_nt(qa.data, qb.data, acc);
          scale_i32(acc, qa, qb, d);
        });
        gemm_row(std::string("i8 ") + granularity_name(g).data() + " -> i32 + scale_i32", ms);
      }
    }
  }
  return 0;
}

}  // namespace halo::cli
