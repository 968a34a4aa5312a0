#include "kernels/cross_entropy.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
void cross_entropy_cuda(Tensor& logits, const Tensor& targets, Tensor& losses, float loss_scale, bool grad);
void sum_losses_cuda(const Tensor& losses, Tensor& total, bool accumulate);
#endif

namespace {

void check_args(const Tensor& logits, const Tensor& targets, const Tensor& losses, const char* op) {
  HALO_CHECK(logits.ndim() == 2, op, ": logits must be 2-D [n, V], got ", logits.describe());
  HALO_CHECK(logits.dtype() == DType::f32 || logits.dtype() == DType::bf16, op,
             ": logits must be f32 or bf16, got ", logits.describe());
  HALO_CHECK(logits.size(1) > 0, op, ": empty vocabulary in ", logits.describe());
  const int64_t n = logits.size(0);
  check_shape(targets, {n}, "cross_entropy targets");
  check_dtype(targets, DType::i32, "cross_entropy targets");
  check_shape(losses, {n}, "cross_entropy losses");
  check_dtype(losses, DType::f32, "cross_entropy losses");
  check_same_device(logits, targets, op);
  check_same_device(logits, losses, op);
}

// The reference: f32 max, f64 sum of exponentials and f64 gradient, per row.
void cross_entropy_cpu(const Tensor& logits, const Tensor& targets, Tensor& losses, float loss_scale,
                       bool grad, const char* op) {
  const int64_t n = logits.size(0), V = logits.size(1);
  const int32_t* target = targets.data_as<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    HALO_CHECK(target[i] < V, op, ": target ", target[i], " of row ", i, " is not below the vocabulary size ", V);
  void* x = logits.data();
  const DType dt = logits.dtype();
  float* loss = losses.data_as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t base = i * V, t = target[i];
    if (t < 0) {
      loss[i] = 0.0f;
      if (grad)
        for (int64_t j = 0; j < V; ++j) store_float(x, dt, base + j, 0.0f);
      continue;
    }
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < V; ++j) m = std::fmax(m, load_float(x, dt, base + j));
    double s = 0.0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(load_float(x, dt, base + j)) - m);
    loss[i] = static_cast<float>(m + std::log(s) - load_float(x, dt, base + t));
    if (!grad) continue;
    for (int64_t j = 0; j < V; ++j) {
      double p = std::exp(static_cast<double>(load_float(x, dt, base + j)) - m) / s;
      if (j == t) p -= 1.0;
      store_float(x, dt, base + j, static_cast<float>(p * loss_scale));
    }
  }
}

}  // namespace

void cross_entropy_forward_backward(Tensor& logits, const Tensor& targets, Tensor& losses, float loss_scale) {
  check_args(logits, targets, losses, "cross_entropy_forward_backward");
  if (logits.is_cuda()) {
#ifdef HALO_HAS_CUDA
    cross_entropy_cuda(logits, targets, losses, loss_scale, true);
    return;
#endif
  }
  cross_entropy_cpu(logits, targets, losses, loss_scale, true, "cross_entropy_forward_backward");
}

void cross_entropy_loss(const Tensor& logits, const Tensor& targets, Tensor& losses) {
  check_args(logits, targets, losses, "cross_entropy_loss");
  if (logits.is_cuda()) {
#ifdef HALO_HAS_CUDA
    Tensor x = logits;  // not written: the kernel runs without its gradient pass
    cross_entropy_cuda(x, targets, losses, 0.0f, false);
    return;
#endif
  }
  cross_entropy_cpu(logits, targets, losses, 0.0f, false, "cross_entropy_loss");
}

void sum_losses(const Tensor& losses, Tensor& total, bool accumulate) {
  HALO_CHECK(losses.ndim() == 1, "sum_losses: losses must be 1-D, got ", losses.describe());
  check_dtype(losses, DType::f32, "sum_losses losses");
  check_shape(total, {1}, "sum_losses total");
  check_dtype(total, DType::f32, "sum_losses total");
  check_same_device(losses, total, "sum_losses");
  if (losses.is_cuda()) {
#ifdef HALO_HAS_CUDA
    sum_losses_cuda(losses, total, accumulate);
    return;
#endif
  }
  const float* l = losses.data_as<float>();
  double s = 0.0;
  for (int64_t i = 0; i < losses.numel(); ++i) s += l[i];
  float* out = total.data_as<float>();
  out[0] = static_cast<float>(accumulate ? out[0] + s : s);
}

}  // namespace halo
