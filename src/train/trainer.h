// The training loop of `halo train`: one run of a TrainConfig, from a model
// directory or a random initialization, with logging, validation,
// checkpoints, resume and a clean stop on SIGINT / SIGTERM.
//
// What a run writes under config.out:
//   step-NNNNNNNN/   checkpoints (train/checkpoint.h): a Hugging Face model
//                    directory (weights in save_dtype) plus the optimizer
//                    state, the trainer state and the resolved config, and
//                    the tokenizer files of the model (or of config.tokenizer)
//   metrics.jsonl    one object per step {"step", "loss", "grad_norm", "lr",
//                    "tokens", "tokens_per_s", "step_ms", "skipped"} and one
//                    per evaluation {"step", "val_loss"}, and with eval_data
//                    one at the end {"step", "accuracy", "eval_metric", "eval_records"}
//   eval.jsonl       with eval_data: the final model's answers, one per record
//                    (eval/evaluate.h)
//   final/           the trained model (config.json, model.safetensors) once the
//                    run completes: hard links to the last checkpoint's model
//                    files (a copy where links are not possible)
//
// One step: grad_accum micro-batches (forward and backward, gradients summed,
// the loss averaged over all their counted tokens), then AdamW at the
// schedule's learning rate with the gradient norm clipped to grad_clip. A step
// whose gradients are not finite is skipped by the optimizer and the run goes
// on (after kMaxSkippedInARow skipped steps in a row it stops with an error);
// a loss that is not finite stops the run with an error naming the step, and
// nothing of that state is saved.
//
// Resume: a checkpoint restores the weights (exactly, from the f32 masters),
// the optimizer state, the data position and the seed, so on the CPU the
// resumed run's losses equal the uninterrupted run's bit for bit. Recipes with
// stochastic rounding of gradients ("+sr") resume on a different random
// stream (the linears' stream counters are not saved).
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "train/run_config.h"

namespace halo {

class LlamaModel;

// Steps skipped in a row (non-finite gradients) after which a run stops: the
// model no longer learns (typically diverged weights).
inline constexpr int64_t kMaxSkippedInARow = 10;

struct TrainOptions {
  // "": a new run (out/ must hold no checkpoint); "auto": continue from the
  // newest checkpoint in out/, or start a new run when there is none; else
  // the checkpoint directory to continue from.
  std::string resume;
  bool quiet = false;          // print nothing (tests)
  bool handle_signals = true;  // SIGINT / SIGTERM: finish the step, save a checkpoint, return
  // Called before every step with the number of steps done, e.g. to inspect
  // or perturb the model (tests inject a NaN weight this way).
  std::function<void(LlamaModel& model, int64_t steps_done)> before_step;
  // Called after every step with the step number (1-based) and its loss.
  std::function<void(int64_t step, double loss)> on_step;
};

struct TrainResult {
  int64_t first_step = 0;      // steps done before this run (a resumed checkpoint's step)
  int64_t steps = 0;           // steps done at the end, those before a resume included
  int64_t total_steps = 0;     // the run's length
  std::vector<double> losses;  // the loss of each step this run took: steps first_step + 1, ...
  double loss = std::numeric_limits<double>::quiet_NaN();      // the last step's
  double val_loss = std::numeric_limits<double>::quiet_NaN();  // the last evaluation's (NaN: none)
  double accuracy = std::numeric_limits<double>::quiet_NaN();  // on eval_data at the end (NaN: none)
  int64_t skipped_steps = 0;                                   // over the whole run
  double tokens_per_s = 0.0;                                   // this run's training tokens over its step time
  int signal = 0;          // SIGINT or SIGTERM when one stopped the run early, else 0
  std::string checkpoint;  // the last checkpoint written ("" if none)
  std::string final_dir;   // out/final when the run completed, else ""
};

// Runs (or continues) the training run `config` (checked with
// check_train_config first). Throws halo::Error on a bad configuration, data
// the model cannot read, not enough GPU memory for the planned step, or a
// loss that is not finite.
TrainResult run_training(const TrainConfig& config, const TrainOptions& options = TrainOptions());

// The first GPU's dense BF16 tensor-core peak in FLOP/s (fp32 accumulate),
// looked up by its name: H100 / H200 SXM 989e12, H100 PCIe 756e12, A100
// 312e12, L40S 362e12. 0 when unknown or without a GPU: MFU is not reported.
double gpu_peak_bf16_flops();

// "512 B", "3.25 KiB", "1.50 MiB", "2.00 GiB".
std::string format_bytes(double bytes);

}  // namespace halo
