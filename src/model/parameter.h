// What a model shows the optimizer and the checkpoint code: its trainable
// tensors, their gradients, and how to tell the model a tensor was changed.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace halo {

struct Parameter {
  // Unique and stable across runs (optimizer state is saved under it). Tensors
  // that the model keeps fused (e.g. q, k and v in one linear) are one
  // Parameter with a name of its own, not the Hugging Face names.
  std::string name;
  // The tensor the forward reads: f32 on the CPU, bf16 on the GPU. The
  // optimizer keeps an f32 master copy when it is bf16 and the run asks for one.
  Tensor value;
  // The gradient, f32 (or bf16: ModelOptions::grad_dtype), the shape of `value`,
  // summed over the micro-batches since the model's zero_grad(). Called once per
  // optimizer step (it may compute it, e.g. rotate a HALO linear's gradient back).
  std::function<Tensor()> grad;
  // Called after the optimizer has written `value` (a HALO linear then
  // re-quantizes its weight on next use). May be empty.
  std::function<void()> updated;
  bool decay = true;  // false for norm weights and biases: no weight decay
  // Optional: the gradient times R, its rows rotated by the Hadamard rotation of
  // their length (a HALO linear's gradient as its backward accumulates it, before
  // grad() rotates it back). The optimizer takes this one when given and turns it
  // back inside its update (AdamWParam::grad_rotated); the norm is the same.
  std::function<Tensor()> rotated_grad;
  // Optional: i8 [rows of the gradient], 0 where the gradient's row is all zeros
  // (an embedding's rows no token of the step used); the optimizer then skips
  // reading those rows (AdamWParam::grad_rows). Whatever adds gradients from
  // elsewhere into this one (e.g. a data-parallel sum) must merge the flags too.
  std::function<Tensor()> grad_rows;
};

}  // namespace halo
