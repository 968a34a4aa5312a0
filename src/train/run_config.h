// The configuration of a `halo train` run: every key, its default, and where it
// can come from. A TOML file (--config FILE) gives values; --key value or
// --key=value on the command line overrides them, in order. The resolved
// config is written with every checkpoint (to_toml), and reads back equal.
//
// Keys (all top-level in the TOML file; "" / 0 mean unset where noted):
//   model           Hugging Face model directory to fine-tune          } exactly
//   init            config.json of a model to initialize randomly       } one
//   recipe          the block linears' recipe (halo/recipe.h), e.g. "halo2-int8"
//   lm_head_recipe  the LM head's recipe                 "bf16"
//   data            token file (data/token_data.h), or a JSONL file (".jsonl",
//                   data/jsonl.h) tokenized when the run starts   required
//   val_data        validation token or JSONL file        "": hold out val_fraction
//   val_fraction    documents of `data` held out when no val_data (0: no validation)
//   tokenizer       model directory (or tokenizer.json) whose tokenizer reads
//                   JSONL data                            "": the model directory
//   template        chat template of JSONL data: auto (from the tokenizer) | none |
//                   llama3 | chatml | llama2 | mistral    "auto"
//   loss_on         tokens of JSONL data the loss counts: assistant (the answers;
//                   all tokens of text records) | all     "assistant"
//   packing         pack (documents end to end) | pad (each document starts a
//                   row; data/token_data.h)               "pack"
//   steps           optimizer steps                       } exactly one > 0
//   epochs          passes over the training documents    }
//   batch           rows per micro-batch                  8
//   seq_len         tokens per row                        1024
//   grad_accum      micro-batches per optimizer step      1
//   lr              peak learning rate                    1e-4
//   min_lr_ratio    floor of the decay, times lr          0.1
//   schedule        constant | linear | cosine            "cosine"
//   warmup_steps    linear warmup                         0
//   weight_decay    decoupled (AdamW)                     0.0
//   beta1, beta2, eps                                     0.9, 0.999, 1e-8
//   grad_clip       max global gradient norm (0: off)     1.0
//   master_weights  "fp32" (f32 master copy) | "bf16"     "fp32"
//   grad_dtype      the linears' weight gradients: "f32" | "bf16" (GPU only)   "f32"
//   stochastic_rounding  bf16 master weights rounded stochastically   false
//   recompute       recompute activations in backward     false
//   eval_interval   steps between evaluations (0: at the end only)   0
//   eval_batches    micro-batches per evaluation (0: the whole set)  0
//   eval_data       JSONL records whose answers the trained model generates at
//                   the end of the run, scored by eval_metric (eval/evaluate.h)   "": none
//   eval_metric     exact | sql | gsm8k | viggo            "exact"
//   eval_max_new_tokens  tokens generated per answer       128
//   save_interval   steps between checkpoints (0: at the end only)   0
//   keep_checkpoints  newest checkpoints kept (0: all)    2
//   out             run directory (checkpoints, metrics)  "runs/halo"
//   seed            data order, initialization, stochastic rounding   0
//   device          "auto" | "cpu" | "cuda"               "auto"
//   log_interval    steps between log lines               1
//   save_dtype      dtype of saved model weights: "bf16" | "f32"       "bf16"
// Paths are kept as written (relative ones are relative to the working directory).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace halo {

struct TrainConfig {
  std::string model;
  std::string init;
  std::string recipe = "halo2-int8";
  std::string lm_head_recipe = "bf16";
  std::string data;
  std::string val_data;
  double val_fraction = 0.01;
  std::string tokenizer;
  std::string chat_template = "auto";  // the key "template"
  std::string loss_on = "assistant";
  std::string packing = "pack";
  int64_t steps = 0;
  double epochs = 0.0;
  int64_t batch = 8;
  int64_t seq_len = 1024;
  int64_t grad_accum = 1;
  double lr = 1e-4;
  double min_lr_ratio = 0.1;
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double grad_clip = 1.0;
  std::string master_weights = "fp32";
  std::string grad_dtype = "f32";
  bool stochastic_rounding = false;
  bool recompute = false;
  int64_t eval_interval = 0;
  int64_t eval_batches = 0;
  std::string eval_data;
  std::string eval_metric = "exact";
  int64_t eval_max_new_tokens = 128;
  int64_t save_interval = 0;
  int64_t keep_checkpoints = 2;
  std::string out = "runs/halo";
  int64_t seed = 0;
  std::string device = "auto";
  int64_t log_interval = 1;
  std::string save_dtype = "bf16";

  bool operator==(const TrainConfig&) const = default;
};

// The key names, in the order above.
std::vector<std::string> train_config_keys();

// Values from TOML text; `source` (the file name) names it in errors, with the
// key and line: a syntax error, an unknown key, a wrong type, a bad value.
// Keys not in the text keep their value in `base`. Does not check the keys
// together (a later override may complete them): see check_train_config.
TrainConfig parse_train_config(std::string_view toml_text, const std::string& source,
                               const TrainConfig& base = TrainConfig());
TrainConfig load_train_config(const std::string& path, const TrainConfig& base = TrainConfig());

// Sets one key from its command-line spelling ("1e-4", "true", "cosine");
// errors name the flag --key.
void set_train_config_key(TrainConfig& c, const std::string& key, const std::string& value);

// Applies command-line options in order: --key value, --key=value, and a bare
// --flag for a boolean key (true). --config FILE, wherever it stands, is loaded
// first, so the other options override it. Unknown options are errors (take
// the trainer's own options, such as --resume, out first).
void apply_train_args(TrainConfig& c, const std::vector<std::string>& args);

// Checks the keys together: exactly one of model / init, data given, exactly
// one of steps / epochs, recipes parse, a tokenizer for JSONL data (tokenizer
// or model). Each key's own range is checked when set.
void check_train_config(const TrainConfig& c);

// Defaults, then args (apply_train_args), then check_train_config.
TrainConfig train_config_from_args(const std::vector<std::string>& args);

// The whole config as TOML, every key in the order above (empty strings left
// out); parse_train_config(to_toml(c)) == c, doubles exactly.
std::string to_toml(const TrainConfig& c);

}  // namespace halo
