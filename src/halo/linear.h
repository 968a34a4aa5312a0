// The HALO linear layer: Y = X W^T (+ b) with its backward dX = dY W, dW = dY^T X,
// db = sum dY, each matmul computed as the layer's recipe says (recipe.h).
//
// Per recipe (X [b, n], W [m, n], R_n / R_b Hadamard rotations, Q quantization):
//   halo0  Y = Q(X) Q(W)^T           dX = Q(dY) Q(W)            dW = Q(dY)^T Q(X)
//   halo1  Y = Q(X R) Q(W R)^T       dX = Q(dY) Q(W R) R^T      dW = Q(dY)^T Q(X R) R^T
//   halo2  as halo1, but             dX = R_b Q(R_b^T dY) Q(W R) R^T
// The weight is rotated and quantized once, on first use after weight_updated(),
// and reused by forward and backward of every micro-batch. What is kept for
// backward is the 8-bit Q(X R)^T with its scales. dW is accumulated in the
// rotated basis and rotated back once, when weight_grad() is asked for.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "halo/recipe.h"
#include "kernels/quantize.h"

namespace halo {

// What forward keeps for backward.
struct LinearSaved {
  QTensor x_t;  // 8-bit recipes: Q(X~)^T [n, b]
  Tensor x;     // bf16 recipe: X [b, n]
  Shape x_shape;
};

class HaloLinear {
 public:
  // dtype: of the weight and of activations (f32 or bf16; bf16 on the GPU).
  // init: a uniform(+-1/sqrt(in)) weight and bias from `seed` (a slow host
  // loop); false leaves them allocated, unset (a model then loads or
  // initializes them itself). seed also drives stochastic rounding.
  HaloLinear(int64_t in_features, int64_t out_features, bool has_bias, const Recipe& recipe,
             Device device, DType dtype, uint64_t seed = 0, bool init = true);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const Recipe& recipe() const { return recipe_; }

  Tensor weight;  // [out, in]
  Tensor bias;    // [out], undefined without bias

  // x: [..., in] -> [..., out]. `saved` may be null when no backward follows.
  Tensor forward(const Tensor& x, LinearSaved* saved);
  // dy: [..., out] -> dx [..., in]; adds this micro-batch's dW and db to the gradients.
  Tensor backward(const Tensor& dy, const LinearSaved& saved);

  // The weight gradient's dtype: f32 (the default) or, on the GPU, bf16 (half the
  // memory and traffic; each backward's sum over the tokens is still f32 inside
  // the GEMM, rounded once when added). Zeroes the gradients.
  void set_weight_grad_dtype(DType dtype);
  DType weight_grad_dtype() const { return grad_w_.dtype(); }
  Tensor weight_grad();  // [out, in] (weight_grad_dtype), summed over backward calls since zero_grad()
  // Rotating recipes: the same gradient times R (rows in the rotated basis, as the
  // backward accumulates it; no rotation back); undefined for the others.
  Tensor rotated_weight_grad();
  Tensor bias_grad();    // f32 [out], undefined without bias
  void zero_grad();
  void weight_updated() { weight_ready_ = false; }  // call after changing `weight`
  // Stochastic rounding of the gradients draws stream pass * 2^20 + k for the
  // k-th backward call since begin_pass(pass): a model numbers its passes, so a
  // resumed run rounds exactly as the uninterrupted one. Without begin_pass,
  // pass 0 and k counts every backward call.
  void begin_pass(uint64_t pass) { pass_ = pass, calls_in_pass_ = 0; }

 private:
  void prepare_weight();
  void clear_if_no_backward();  // zeroes the gradients when no backward ran since zero_grad()
  Tensor matmul_nt(const QTensor& a, const QTensor& b, const Tensor* bias_vec, Tensor* accumulate_into);

  int64_t in_, out_;
  Recipe recipe_;
  DType dtype_;
  uint64_t seed_;
  uint64_t pass_ = 0, calls_in_pass_ = 0;  // each backward's stochastic-rounding stream
  bool weight_ready_ = false;
  QTensor w_q_;   // Q(W~)   [m, n]  for Y
  QTensor w_qt_;  // Q(W~)^T [n, m]  for dX
  Tensor grad_w_;  // f32 or bf16 [m, n]; in the rotated basis for rotating recipes
  Tensor grad_b_;  // f32 [m]
  bool grads_zero_ = true;  // the next backward writes the gradients instead of adding
};

}  // namespace halo
