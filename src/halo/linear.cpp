#include "halo/linear.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/gemm.h"
#include "kernels/hadamard.h"
#include "kernels/reduce.h"

namespace halo {

namespace {

// The smallest row count >= rows that has a full (not block-diagonal) Hadamard
// rotation: halo2 pads the token dimension with zero rows up to it.
int64_t padded_token_count(int64_t rows) {
  int64_t r = rows;
  while (!hadamard_full(r)) ++r;
  return r;
}

Tensor pad_rows(const Tensor& x, int64_t rows) {
  if (x.size(0) == rows) return x;
  Tensor p = Tensor::zeros({rows, x.size(1)}, x.dtype(), x.device());
  p.rows(0, x.size(0)).copy_from(x);
  return p;
}

Shape with_last(Shape s, int64_t last) {
  s.back() = last;
  return s;
}

}  // namespace

HaloLinear::HaloLinear(int64_t in_features, int64_t out_features, bool has_bias, const Recipe& recipe,
                       Device device, DType dtype, uint64_t seed, bool init)
    : in_(in_features), out_(out_features), recipe_(recipe), dtype_(dtype), seed_(seed) {
  HALO_CHECK(in_ > 0 && out_ > 0, "HaloLinear: bad size ", in_, " -> ", out_);
  HALO_CHECK(dtype == DType::f32 || dtype == DType::bf16, "HaloLinear: dtype must be f32 or bf16, got ",
             dtype_name(dtype));
  grad_w_ = Tensor::zeros({out_, in_}, DType::f32, device);
  if (has_bias) grad_b_ = Tensor::zeros({out_}, DType::f32, device);
  if (!init) {
    weight = Tensor::empty({out_, in_}, dtype, device);
    if (has_bias) bias = Tensor::empty({out_}, dtype, device);
    return;
  }
  // Kaiming-uniform-like init with the counter-based RNG: same weights on every device.
  Tensor w = Tensor::empty({out_, in_}, dtype);
  const float bound = 1.0f / std::sqrt(static_cast<float>(in_));
  for (int64_t i = 0; i < w.numel(); ++i)
    store_float(w.data(), dtype, i, bound * (2.0f * uniform01(seed, 0, i) - 1.0f));
  weight = w.to(device);
  if (has_bias) {
    Tensor b = Tensor::empty({out_}, dtype);
    for (int64_t i = 0; i < out_; ++i) store_float(b.data(), dtype, i, bound * (2.0f * uniform01(seed, 1, i) - 1.0f));
    bias = b.to(device);
  }
}

void HaloLinear::set_weight_grad_dtype(DType dtype) {
  HALO_CHECK(dtype == DType::f32 || (dtype == DType::bf16 && grad_w_.is_cuda()),
             "HaloLinear: the weight gradient can be f32, or bf16 on the GPU; got ", dtype_name(dtype), " on ",
             device_name(grad_w_.device()));
  if (dtype != grad_w_.dtype()) grad_w_ = Tensor::zeros(grad_w_.shape(), dtype, grad_w_.device());
  grads_zero_ = true;
}

// No memset per step: the next backward writes the gradients instead of adding
// to them. Asked for before any backward, they are zeroed then.
void HaloLinear::zero_grad() { grads_zero_ = true; }

void HaloLinear::clear_if_no_backward() {
  if (!grads_zero_) return;
  grad_w_.fill_zero();
  if (grad_b_.defined()) grad_b_.fill_zero();
}

void HaloLinear::prepare_weight() {
  if (weight_ready_ || !recipe_.quantized()) return;
  check_shape(weight, {out_, in_}, "HaloLinear weight");
  quantize(weight, operand_spec(recipe_), recipe_.rotates(), &w_q_, &w_qt_);
  weight_ready_ = true;
}

// a [M, K] x b [N, K] -> [M, N]: the 8-bit GEMM, or in simulation the same
// product of the dequantized operands.
Tensor HaloLinear::matmul_nt(const QTensor& a, const QTensor& b, const Tensor* bias_vec,
                             Tensor* accumulate_into) {
  GemmOptions opt;
  opt.bias = bias_vec;
  opt.fast_accum = recipe_.fast_accum();
  Tensor d;
  if (accumulate_into) {
    d = *accumulate_into;
    opt.accumulate = !grads_zero_;
  } else {
    d = Tensor::empty({a.rows(), b.rows()}, dtype_, a.data.device());
  }
  if (recipe_.simulate) {
    Tensor da = Tensor::empty(a.data.shape(), dtype_, a.data.device());
    Tensor db = Tensor::empty(b.data.shape(), dtype_, b.data.device());
    dequantize(a, da);
    dequantize(b, db);
    gemm_nt(da, db, d, opt);
  } else {
    gemm_nt(a, b, d, opt);
  }
  return d;
}

Tensor HaloLinear::forward(const Tensor& x, LinearSaved* saved) {
  HALO_CHECK(x.ndim() >= 1 && x.size(-1) == in_, "HaloLinear forward: expected input [..., ", in_, "], got ",
             x.describe());
  check_dtype(x, dtype_, "HaloLinear forward input");
  check_same_device(x, weight, "HaloLinear forward");
  const Tensor x2 = x.as_2d();
  const Tensor* bias_vec = bias.defined() ? &bias : nullptr;
  Tensor y;
  if (!recipe_.quantized()) {
    y = Tensor::empty({x2.size(0), out_}, dtype_, x.device());
    GemmOptions opt;
    opt.bias = bias_vec;
    gemm_nt(x2, weight, y, opt);
    if (saved) saved->x = x2;
  } else {
    prepare_weight();
    QTensor qx, qx_t;
    quantize(x2, operand_spec(recipe_), recipe_.rotates(), &qx, saved ? &qx_t : nullptr);
    y = matmul_nt(qx, w_q_, bias_vec, nullptr);
    if (saved) saved->x_t = qx_t;
  }
  if (saved) saved->x_shape = x.shape();
  return y.view(with_last(x.shape(), out_));
}

Tensor HaloLinear::backward(const Tensor& dy, const LinearSaved& saved) {
  HALO_CHECK(!saved.x_shape.empty() && dy.shape() == with_last(saved.x_shape, out_),
             "HaloLinear backward: gradient ", dy.describe(), " does not match the forward input ",
             shape_str(saved.x_shape));
  check_dtype(dy, dtype_, "HaloLinear backward gradient");
  const Tensor dy2 = dy.as_2d();
  const int64_t rows = dy2.size(0);
  if (grad_b_.defined()) column_sum(dy2, grad_b_, /*accumulate=*/!grads_zero_);

  if (!recipe_.quantized()) {
    Tensor dx = Tensor::empty({rows, in_}, dtype_, dy.device());
    gemm(dy2, false, weight, false, dx, GemmOptions{});                         // dX = dY W
    gemm(dy2, true, saved.x, false, grad_w_, GemmOptions{1.0f, !grads_zero_});  // dW += dY^T X
    grads_zero_ = false;
    return dx.view(saved.x_shape);
  }

  prepare_weight();
  const QuantSpec gspec = gradient_spec(recipe_, seed_, (pass_ << 20) + ++calls_in_pass_);
  QTensor g, g_t;  // Q(dY) [b, m] for dX and Q(dY)^T [m, b] for dW
  if (recipe_.method == Method::halo2) {
    // dX = R_b Q(R_b^T dY) Q(W~) R^T, the token dimension padded to a Hadamard size.
    // The rotation also gives both tensors' maxima where the GPU fuses it, so
    // per-tensor quantizers skip their first pass (the zero padding changes no maximum).
    Tensor e = pad_rows(dy2, padded_token_count(rows));
    Tensor e_rot = Tensor::empty(e.shape(), dtype_, e.device());
    Tensor max_e, max_rot;
    QuantSpec rot_spec = gspec, plain_spec = gspec;
    if (!(gspec.scaled && gspec.granularity == Granularity::tensor)) {
      hadamard_cols(e, e_rot);
    } else if (hadamard_cols_absmax(e, e_rot, false, max_e, max_rot)) {
      plain_spec.absmax_parts = &max_e;
      rot_spec.absmax_parts = &max_rot;
    }
    quantize(e_rot, rot_spec, false, &g, nullptr);
    quantize(dy2, plain_spec, false, nullptr, &g_t);
  } else {
    quantize(dy2, gspec, false, &g, &g_t);
  }
  // halo2: R_b is undone on the product in the layer's dtype (bf16 on the GPU), as in the method.
  Tensor dx = matmul_nt(g, w_qt_, nullptr, nullptr);  // [b (padded), n]
  if (recipe_.method == Method::halo2) hadamard_cols(dx, dx, /*transpose=*/true);
  if (recipe_.method == Method::halo2 && dx.size(0) != rows) {
    Tensor top = Tensor::empty({rows, in_}, dtype_, dx.device());
    top.copy_from(dx.rows(0, rows));
    dx = top;
  }
  if (recipe_.rotates()) hadamard_rows(dx, dx, /*transpose=*/true);
  matmul_nt(g_t, saved.x_t, nullptr, &grad_w_);  // dW~ += Q(dY)^T Q(X~)
  grads_zero_ = false;
  return dx.view(saved.x_shape);
}

Tensor HaloLinear::weight_grad() {
  clear_if_no_backward();
  if (!recipe_.rotates()) return grad_w_;
  Tensor g = Tensor::empty(grad_w_.shape(), grad_w_.dtype(), grad_w_.device());
  hadamard_rows(grad_w_, g, /*transpose=*/true);
  return g;
}

Tensor HaloLinear::rotated_weight_grad() {
  if (!recipe_.rotates()) return Tensor();
  clear_if_no_backward();
  return grad_w_;
}

Tensor HaloLinear::bias_grad() {
  clear_if_no_backward();
  return grad_b_;
}

}  // namespace halo
