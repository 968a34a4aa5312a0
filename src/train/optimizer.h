// AdamW over a model's parameters (kernels/adamw.h does the math), with
// global gradient-norm clipping and the storage the run asks for:
//
//   master fp32, bf16 values (the GPU)  an f32 master copy per parameter and
//                                       f32 m, v; the step updates the master and
//                                       writes bf16(master) into the value
//   f32 values (the CPU), either mode   the value is updated in place, m, v f32
//                                       (there is no lower precision to save)
//   master bf16, bf16 values            value, m, v all bf16, rounded to nearest
//                                       or stochastically (stochastic_rounding)
//
// One step: every parameter's grad() is taken once, the global norm of all of
// them computed, the clip coefficient applied inside the update, then each
// parameter's updated() called. Nothing waits for the GPU: the squared norm
// comes back as a device tensor; the trainer reads it once per step with
// finish_step(), which also notices a skipped step (non-finite gradients: the
// update wrote nothing) so the next step reuses its AdamW step number.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "kernels/adamw.h"
#include "model/parameter.h"

namespace halo {

enum class MasterWeights : uint8_t { fp32, bf16 };
MasterWeights parse_master_weights(const std::string& name);  // "fp32" | "bf16"

struct OptimizerOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled; not applied to parameters with decay = false
  MasterWeights master_weights = MasterWeights::fp32;
  bool stochastic_rounding = false;  // bf16 storage only
  uint64_t seed = 0;                 // of the stochastic rounding
};

// Bytes the optimizer holds on the parameters' device.
struct OptimizerMemory {
  int64_t master = 0;  // f32 master copies (0 when the values are updated in place)
  int64_t states = 0;  // m and v
};

class Optimizer {
 public:
  // Allocates the state (zeros) and the master copies (from the values) on
  // each parameter's device. Parameter names must be unique.
  Optimizer(std::vector<Parameter> params, const OptimizerOptions& options);

  // One AdamW step at learning rate lr, gradients scaled to a global norm of
  // at most max_norm (<= 0: no clipping). Returns the squared global gradient
  // norm before clipping, f32 [1] on the parameters' device (no host sync).
  Tensor step(float lr, float max_norm);
  // Reads step()'s result on the host and returns the gradient norm. A
  // non-finite norm means the step was skipped: it is counted in skipped() and
  // not in steps().
  double finish_step(const Tensor& norm_sq);

  int64_t steps() const { return step_; }  // AdamW steps taken (the t of the last one)
  int64_t skipped() const { return skipped_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  OptimizerMemory memory() const;

  // The state as named tensors on the parameters' device: "<param>.m",
  // "<param>.v", "<param>.master" (f32 weights, whenever the optimizer holds
  // f32 weights: the master copy, or the f32 value itself, so a resume is
  // exact whatever dtype the model was saved in) and "optimizer.step" (i32 [1]).
  NamedTensors state_dict() const;
  // Restores a state_dict() (tensors on any device; other dtypes are
  // converted). m, v and the step must be there, with the parameter's element
  // count; an unknown name is an error; `source` names it in errors. A
  // "<param>.master" sets the f32 weights and the value (bf16 by rounding to
  // nearest); without one (a state saved with bf16 master weights) the f32
  // copy is taken from the value. Each parameter's updated() is called.
  void load_state_dict(const NamedTensors& state, const std::string& source);

 private:
  struct Slot {
    Tensor master;  // f32 copy when the value is bf16 and the run keeps one; else undefined
    Tensor m, v;
  };
  std::vector<Parameter> params_;
  std::vector<Slot> slots_;
  OptimizerOptions options_;
  int64_t step_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace halo
