// halo train: runs (or continues) a training run (train/trainer.h) from a TOML
// config and --key value overrides (train/run_config.h).
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "train/checkpoint.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace halo::cli {

namespace {

// What each config key means (the defaults come from TrainConfig itself).
const std::map<std::string, std::string> kKeyHelp = {
    {"model", "Hugging Face model directory to fine-tune (or init)"},
    {"init", "config.json of a model to initialize randomly (or model)"},
    {"recipe", "recipe of the block linears (halo{0,1,2}-{int8,fp8}, bf16, ...)"},
    {"lm_head_recipe", "recipe of the LM head"},
    {"data", "token file or JSONL file to train on (halo data synth / jsonl)"},
    {"val_data", "validation token or JSONL file (else val_fraction of data)"},
    {"val_fraction", "documents of data held out for validation (0: none)"},
    {"tokenizer", "tokenizer of JSONL data (model dir or tokenizer.json; else model)"},
    {"template", "chat template of JSONL data: auto|none|llama3|chatml|llama2|mistral"},
    {"loss_on", "JSONL tokens the loss counts: assistant | all"},
    {"packing", "pack (documents end to end) | pad (each starts a row)"},
    {"steps", "optimizer steps (or epochs)"},
    {"epochs", "passes over the training documents (or steps)"},
    {"batch", "rows per micro-batch"},
    {"seq_len", "tokens per row"},
    {"grad_accum", "micro-batches per optimizer step"},
    {"lr", "peak learning rate"},
    {"min_lr_ratio", "floor of the decay, times lr"},
    {"schedule", "constant | linear | cosine"},
    {"warmup_steps", "steps of linear warmup"},
    {"weight_decay", "decoupled weight decay (AdamW)"},
    {"beta1", "AdamW beta1"},
    {"beta2", "AdamW beta2"},
    {"eps", "AdamW epsilon"},
    {"grad_clip", "max global gradient norm (0: no clipping)"},
    {"master_weights", "fp32 (f32 master copy) | bf16"},
    {"grad_dtype", "the linears' weight gradients: f32 | bf16 (GPU only: half the memory)"},
    {"stochastic_rounding", "bf16 master weights rounded stochastically"},
    {"recompute", "recompute activations in the backward (less memory)"},
    {"eval_interval", "steps between validations (0: at the end only)"},
    {"eval_batches", "micro-batches per validation (0: the whole set)"},
    {"eval_data", "JSONL whose answers the trained model generates at the end"},
    {"eval_metric", "score of those answers: exact | sql | gsm8k | viggo"},
    {"eval_max_new_tokens", "tokens generated per answer"},
    {"save_interval", "steps between checkpoints (0: at the end only)"},
    {"keep_checkpoints", "newest checkpoints kept (0: all)"},
    {"out", "run directory: checkpoints, metrics.jsonl, final/"},
    {"seed", "data order, initialization, rounding streams"},
    {"device", "auto | cpu | cuda"},
    {"log_interval", "steps between log lines"},
    {"save_dtype", "dtype of saved weights: bf16 | f32"},
};

std::string usage() {
  std::ostringstream os;
  os << "usage: halo train [--config run.toml] [--resume DIR|auto] [--key value ...]\n"
        "\n"
        "Trains a Llama-family model with 8-bit matmuls. Keys come from the TOML file given\n"
        "by --config, then from --key value (or --key=value; a bare --flag sets a boolean);\n"
        "later ones win. --resume auto continues from the newest checkpoint in out/ (or\n"
        "starts a new run); --resume DIR from that checkpoint, whose saved config is then\n"
        "the base when no --config is given. Ctrl-C (SIGINT) or SIGTERM: the current step\n"
        "finishes, a checkpoint is saved, and halo exits with 130 (143 for SIGTERM).\n"
        "\n"
        "keys (default):\n";
  std::map<std::string, std::string> defaults;  // key -> its default as written in TOML
  std::istringstream toml(to_toml(TrainConfig()));
  for (std::string line; std::getline(toml, line);)
    if (const size_t eq = line.find(" = "); eq != std::string::npos) defaults[line.substr(0, eq)] = line.substr(eq + 3);
  for (const std::string& key : train_config_keys()) {
    const auto d = defaults.find(key);
    const auto h = kKeyHelp.find(key);
    char buf[256];
    std::snprintf(buf, sizeof buf, "  %-20s %-14s %s\n", key.c_str(), d == defaults.end() ? "-" : d->second.c_str(),
                  h == kKeyHelp.end() ? "" : h->second.c_str());
    os << buf;
  }
  os << "\nexample: halo train --config configs/tiny-train.toml --steps 100 --out runs/try\n";
  return os.str();
}

}  // namespace

int train(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    std::fputs(usage().c_str(), stderr);
    return 2;
  }
  std::vector<std::string> rest;  // the config options, --resume taken out
  std::string resume;
  bool has_config = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    if (a == "--resume") {
      HALO_CHECK(i + 1 < argv.size(), "option --resume needs a value (a checkpoint directory, or auto)");
      resume = argv[++i];
      continue;
    }
    if (a.rfind("--resume=", 0) == 0) {
      resume = a.substr(9);
      continue;
    }
    if (a == "--config" || a.rfind("--config=", 0) == 0) has_config = true;
    rest.push_back(a);
  }

  TrainConfig config;
  if (!resume.empty() && resume != "auto" && !has_config) {
    // --resume DIR alone: the checkpoint's own config, with the overrides given.
    const std::string source = (std::filesystem::path(resume) / "run_config.toml").string();
    config = parse_train_config(load_run_config(resume), source);
  }
  apply_train_args(config, rest);
  check_train_config(config);

  TrainOptions options;
  options.resume = resume;
  const TrainResult r = run_training(config, options);
  if (r.signal == SIGINT) return 130;
  if (r.signal == SIGTERM) return 143;
  return 0;
}

}  // namespace halo::cli
