// Training checkpoints: one directory per saved step under the run's out/,
//
//   out/step-00000100/
//     (the model: whatever the caller's write_model puts there, e.g. config.json
//      and model.safetensors, so the directory loads in transformers)
//     training_state.safetensors   optimizer state tensors by name (Optimizer::state_dict)
//     trainer_state.json           TrainerState (below)
//     run_config.toml              the resolved run configuration (to_toml)
//
// A checkpoint is built in a hidden staging directory out/.tmp-step-00000100,
// every file in it fsynced, then renamed to its final name and out/ fsynced:
// a directory named step-* is always complete. A crash leaves at most a
// staging directory, which latest_checkpoint ignores and the next
// save_checkpoint (or remove_incomplete_checkpoints) deletes. Older checkpoints
// beyond the newest `keep` are deleted only once the new one is in place.
// One process writes to a given out/ at a time.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/token_data.h"
#include "io/safetensors.h"

namespace halo {

// What the trainer needs to continue a run where it stopped (trainer_state.json).
struct TrainerState {
  int64_t step = 0;           // optimizer steps done
  DataPosition data;          // where the next training batch starts
  uint64_t seed = 0;          // the run's seed (data order, stochastic rounding streams)
  int64_t tokens = 0;         // training tokens consumed so far
  int64_t skipped_steps = 0;  // steps skipped for non-finite gradients
  double loss = 0.0;          // the last logged training loss (NaN allowed)
  double val_loss = 0.0;      // the last validation loss (NaN: none yet)
  nlohmann::json extra = nlohmann::json::object();  // anything else the trainer keeps

  bool operator==(const TrainerState&) const;  // NaN equals NaN here
};

nlohmann::json to_json(const TrainerState& s);
TrainerState trainer_state_from_json(const nlohmann::json& j, const std::string& source);

std::string checkpoint_name(int64_t step);  // "step-00000100"

// Writes out/step-<step>/ atomically as described above; returns its path.
// write_model(dir) writes the model files into the staging directory. On any
// failure (an exception from write_model included) the staging directory is
// removed, the existing checkpoints are left as they were, and the error is
// rethrown. keep > 0: then deletes all but the newest `keep` checkpoints
// (keep = 0: none deleted). A checkpoint of the same step is replaced.
std::string save_checkpoint(const std::string& out, const TrainerState& state, const NamedTensors& optimizer_state,
                            const std::string& config_toml,
                            const std::function<void(const std::string& dir)>& write_model, int64_t keep);

// Complete checkpoints in out/ as (step, path), oldest first; none if out/ is missing.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out);
// The newest complete checkpoint's directory, for --resume.
std::optional<std::string> latest_checkpoint(const std::string& out);
// Deletes staging directories left by a crashed save; returns how many.
int remove_incomplete_checkpoints(const std::string& out);

// Reading a checkpoint directory back; errors name the file.
TrainerState load_trainer_state(const std::string& dir);
NamedTensors load_training_state(const std::string& dir);  // host tensors, in their saved dtypes
std::string load_run_config(const std::string& dir);        // the TOML text

}  // namespace halo
