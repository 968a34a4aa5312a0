#include "train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>

#include "core/allocator.h"
#include "core/device_info.h"
#include "core/error.h"
#include "data/jsonl.h"
#include "data/token_data.h"
#include "eval/evaluate.h"
#include "io/atomic_file.h"
#include "model/config.h"
#include "model/llama.h"
#include "text/tokenizer.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#ifdef HALO_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace halo {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- stopping on SIGINT / SIGTERM ----------------------------------------------------

// The signal that asked the run to stop (0: none). Set by the handler, read by the loop.
volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) { g_stop_signal = sig; }

// Installs the handlers for the run and restores the previous ones after it.
// SA_RESETHAND: a second Ctrl-C ends the process at once (checkpoints are
// written atomically, so that loses at most the one being written).
class SignalGuard {
 public:
  explicit SignalGuard(bool enable) : enabled_(enable) {
    g_stop_signal = 0;
    if (!enabled_) return;
    struct sigaction sa = {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalGuard() {
    if (!enabled_) return;
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

 private:
  bool enabled_;
  struct sigaction old_int_ = {}, old_term_ = {};
};

// printf into a std::string of any length.
template <class... A>
std::string strf(const char* format, A... args) {
  const int n = std::snprintf(nullptr, 0, format, args...);
  std::string out(static_cast<size_t>(n), '\0');
  std::snprintf(out.data(), out.size() + 1, format, args...);
  return out;
}

// A number for messages: "nan", "inf", "-inf" or as printf's %g writes it.
std::string num(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"; }

// ---- setup helpers -----------------------------------------------------------------------

Device pick_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") {
    HALO_CHECK(cuda_available(), "config key 'device': cuda asked for, but ",
               build_info().cuda ? "no usable CUDA device was found" : "this build of halo has no CUDA support");
    return Device::cuda;
  }
  return cuda_available() ? Device::cuda : Device::cpu;  // "auto", as `halo doctor --probe` decides
}

// Free GPU memory in bytes (-1 without CUDA).
int64_t gpu_free_bytes() {
#ifdef HALO_HAS_CUDA
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return static_cast<int64_t>(free_b);
#else
  return -1;
#endif
}

// "key = value" line of each key in a to_toml() text.
std::map<std::string, std::string> toml_lines(const std::string& toml) {
  std::map<std::string, std::string> out;
  std::istringstream in(toml);
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find(" = ");
    if (eq != std::string::npos && line[0] != '#') out[line.substr(0, eq)] = line;
  }
  return out;
}

// The keys whose values differ between two configs, as "key = now (was before)".
std::vector<std::string> config_differences(const TrainConfig& now, const TrainConfig& before) {
  const auto a = toml_lines(to_toml(now)), b = toml_lines(to_toml(before));
  const auto value = [](const std::map<std::string, std::string>& m, const std::string& key) {
    const auto it = m.find(key);
    return it == m.end() ? std::string("unset") : it->second.substr(key.size() + 3);
  };
  std::vector<std::string> out;
  for (const std::string& key : train_config_keys())
    if (value(a, key) != value(b, key)) out.push_back(key + " = " + value(a, key) + " (was " + value(b, key) + ")");
  return out;
}

// The mean loss of the batches of `docs` (eval_batches of them, 0: all),
// each batch's sum read on the host and added in double.
double evaluate(LlamaModel& model, const TokenFile& file, const std::vector<int64_t>& docs, const TrainConfig& c,
                Device device) {
  Batcher val(file, docs, c.batch, c.seq_len, /*shuffle=*/false, 0, parse_packing(c.packing));
  const int64_t n = c.eval_batches > 0 ? std::min(c.eval_batches, val.batches_per_epoch()) : val.batches_per_epoch();
  Tensor loss_sum = Tensor::zeros({1}, DType::f32, device);
  double sum = 0.0;
  int64_t counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Batch b = val.next();
    loss_sum.fill_zero();
    model.forward_loss(b.to(device), loss_sum);
    sum += loss_sum.to_floats()[0];
    counted += b.counted;
  }
  return counted > 0 ? sum / static_cast<double>(counted) : kNaN;
}

// The tokenizer files beside the model a run reads (config.tokenizer, a
// directory or its tokenizer.json, else the model directory), copied into
// each checkpoint so that it is a complete model directory for generate and
// eval. None for a random-init run without a tokenizer.
constexpr const char* kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "generation_config.json"};

void copy_tokenizer_files(const TrainConfig& c, const std::string& dir) {
  fs::path from = !c.tokenizer.empty() ? fs::path(c.tokenizer) : fs::path(c.model);
  if (from.empty()) return;
  if (!fs::is_directory(from)) from = from.parent_path();
  for (const char* name : kTokenizerFiles)
    if (fs::is_regular_file(from / name)) fs::copy_file(from / name, fs::path(dir) / name);
}

// out/final: the model files of checkpoint `ckpt` (all but the training
// state), hard-linked where possible, else copied; replaces an older final/.
std::string export_final(const std::string& out, const std::string& ckpt) {
  const fs::path final_dir = fs::path(out) / "final", staging = fs::path(out) / ".tmp-final";
  fs::remove_all(staging);
  fs::create_directories(staging);
  for (const auto& e : fs::directory_iterator(ckpt)) {
    const std::string name = e.path().filename().string();
    if (name == "training_state.safetensors" || name == "trainer_state.json" || name == "run_config.toml") continue;
    std::error_code ec;
    fs::create_hard_link(e.path(), staging / name, ec);
    if (ec) fs::copy_file(e.path(), staging / name);
  }
  fs::remove_all(final_dir);
  fs::rename(staging, final_dir);
  return final_dir.string();
}

// Prints the planned memory of one step by category; returns the total.
int64_t print_memory(const std::function<void(const std::string&)>& say, const ModelMemory& mm,
                     const OptimizerMemory& om, Device device, bool recompute, bool quantized, bool bf16_grads) {
  const int64_t total = mm.weights + om.master + om.states + mm.gradients + mm.activations + mm.workspace;
  say(std::string("memory on ") + std::string(device_name(device)) + ", planned for one step:");
  const auto row = [&](const char* what, int64_t bytes, const std::string& note = "") {
    say(strf("  %-18s %12s%s", what, format_bytes(static_cast<double>(bytes)).c_str(), note.c_str()));
  };
  row("weights", mm.weights, quantized ? "  (incl. the cached 8-bit weights)" : "");
  row("master weights", om.master, om.master ? "  (f32)" : "  (none: f32 values updated in place)");
  row("optimizer states", om.states, "  (AdamW m, v)");
  row("gradients", mm.gradients, bf16_grads ? "  (bf16 for the linears' weights, f32 for the rest)" : "  (f32)");
  row("activations", mm.activations, recompute ? "  (recompute: one block's)" : "  (saved for the backward)");
  row("workspace", mm.workspace);
  row("total", total);
  return total;
}

}  // namespace

std::string format_bytes(double bytes) {
  char buf[32];
  if (bytes < 1024.0)
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  else if (bytes < 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f KiB", bytes / 1024);
  else if (bytes < 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  return buf;
}

double gpu_peak_bf16_flops() {
  const std::vector<GpuInfo> gpus = gpu_info();
  if (gpus.empty()) return 0.0;
  const std::string& n = gpus[0].name;
  const auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  // Dense BF16 tensor-core peaks (fp32 accumulate) from NVIDIA's data sheets.
  if (has("H100")) return has("PCIe") ? 756e12 : has("NVL") ? 835e12 : 989e12;
  if (has("H200") || has("GH200")) return 989e12;
  if (has("A100")) return 312e12;
  if (has("L40S")) return 362e12;
  return 0.0;
}

TrainResult run_training(const TrainConfig& config_in, const TrainOptions& options) {
  TrainConfig config = config_in;
  check_train_config(config);
  const auto say = [&](const std::string& line) {
    if (!options.quiet) std::printf("%s\n", line.c_str());
  };

  // ---- where the run starts: a new run, or a checkpoint --------------------------------
  remove_incomplete_checkpoints(config.out);
  std::string resume_dir;
  if (options.resume == "auto") {
    if (const auto latest = latest_checkpoint(config.out))
      resume_dir = *latest;
    else
      say("--resume auto: no checkpoint in " + config.out + ", starting a new run");
  } else if (!options.resume.empty()) {
    resume_dir = options.resume;
    HALO_CHECK(fs::is_regular_file(fs::path(resume_dir) / "trainer_state.json"), "--resume: '", resume_dir,
               "' is not a checkpoint directory (it has no trainer_state.json)");
  } else {
    const auto latest = latest_checkpoint(config.out);
    HALO_CHECK(!latest, "out directory '", config.out, "' already holds checkpoints of a run (", latest.value_or(""),
               "): continue it with --resume auto, or choose another out");
  }
  TrainerState state;
  state.seed = static_cast<uint64_t>(config.seed);
  state.val_loss = kNaN;
  if (!resume_dir.empty()) {
    state = load_trainer_state(resume_dir);
    const TrainConfig before =
        parse_train_config(load_run_config(resume_dir), (fs::path(resume_dir) / "run_config.toml").string());
    config.seed = static_cast<int64_t>(state.seed);  // the run keeps its data order and rounding streams
    say("resuming from " + resume_dir + " at step " + std::to_string(state.step));
    for (const std::string& d : config_differences(config, before)) say("  config changed: " + d);
  }
  const uint64_t seed = state.seed;

  // ---- data --------------------------------------------------------------------------------
  const Device device = pick_device(config.device);
  const std::string model_source = !resume_dir.empty()     ? resume_dir
                                   : !config.model.empty() ? config.model
                                                           : config.init;
  const ModelConfig mc = load_config(model_source);
  // A token file, or a JSONL file tokenized now with the run's tokenizer and chat template (data/jsonl.h).
  std::optional<Tokenizer> tokenizer;
  const std::string tokenizer_source = !config.tokenizer.empty() ? config.tokenizer : config.model;
  const auto open_data = [&](const std::string& path) {
    if (path.size() < 6 || path.compare(path.size() - 6, 6, ".jsonl") != 0) return TokenFile(path);
    if (!tokenizer) tokenizer = Tokenizer::load(tokenizer_source);
    JsonlOptions jo;
    jo.chat_template = config.chat_template;
    jo.loss = parse_loss_on(config.loss_on);
    const JsonlDocuments d = read_jsonl_documents(path, *tokenizer, jo);
    say("data: " + path + ": " + describe(d) + "; tokenizer " + tokenizer_source);
    HALO_CHECK(!d.docs.empty(), path, ": no record with a target to train on (", describe(d), ")");
    return TokenFile::from_documents(path, d.docs, &d.masks, tokenizer->vocab_size());
  };
  const TokenFile train_file = open_data(config.data);
  // The records whose answers the trained model generates at the end, read
  // now so that a bad file stops the run before it trains.
  std::vector<EvalRecord> eval_records;
  if (!config.eval_data.empty()) {
    HALO_CHECK(!tokenizer_source.empty(), "eval_data: a run from 'init' needs a 'tokenizer' to generate answers");
    if (!tokenizer) tokenizer = Tokenizer::load(tokenizer_source);
    eval_records = read_eval_records(config.eval_data);
    HALO_CHECK(!eval_records.empty(), config.eval_data, ": no records to evaluate");
  }
  const auto check_vocab = [&](const TokenFile& f) {
    HALO_CHECK(mc.vocab_size >= static_cast<int64_t>(f.vocab_size()), f.path(), ": token ids go up to vocab_size ",
               f.vocab_size(), " but the model (", model_source, ") has a vocabulary of ", mc.vocab_size);
  };
  check_vocab(train_file);
  std::optional<TokenFile> val_file;
  std::vector<int64_t> train_docs, val_docs;
  if (!config.val_data.empty()) {
    val_file.emplace(open_data(config.val_data));
    check_vocab(*val_file);
    train_docs = all_documents(train_file);
    val_docs = all_documents(*val_file);
  } else if (config.val_fraction > 0.0) {
    DocumentSplit split = split_documents(train_file.num_docs(), config.val_fraction, seed);
    train_docs = std::move(split.train);
    val_docs = std::move(split.val);
  } else {
    train_docs = all_documents(train_file);
  }
  const TokenFile& eval_file = val_file ? *val_file : train_file;
  Batcher batcher(train_file, train_docs, config.batch, config.seq_len, /*shuffle=*/true, seed,
                  parse_packing(config.packing));
  const int64_t total_steps =
      config.steps > 0
          ? config.steps
          : static_cast<int64_t>(std::ceil(config.epochs * static_cast<double>(batcher.batches_per_epoch()) /
                                               static_cast<double>(config.grad_accum) -
                                           1e-9));
  HALO_CHECK(total_steps > 0, "config: epochs = ", config.epochs, " gives no steps");
  Schedule schedule;
  schedule.kind = parse_schedule_kind(config.schedule);
  schedule.lr = config.lr;
  schedule.total_steps = total_steps;
  schedule.warmup_steps = config.warmup_steps;
  schedule.min_lr_ratio = config.min_lr_ratio;
  schedule.lr_at(0);  // throws now on a schedule that cannot run
  if (config.seq_len > mc.max_position_embeddings)
    say("warning: seq_len " + std::to_string(config.seq_len) + " exceeds the model's max_position_embeddings " +
        std::to_string(mc.max_position_embeddings));

  // ---- model and optimizer ------------------------------------------------------------------
  ModelOptions mo;
  mo.recipe = parse_recipe(config.recipe);
  mo.lm_head_recipe = parse_recipe(config.lm_head_recipe);
  mo.device = device;
  mo.dtype = device == Device::cuda ? DType::bf16 : DType::f32;
  mo.recompute = config.recompute;
  mo.seed = seed;
  HALO_CHECK(config.grad_dtype == "f32" || device == Device::cuda, "config: grad_dtype = \"", config.grad_dtype,
             "\" runs on the GPU only (the CPU computes in f32); use \"f32\"");
  mo.grad_dtype = parse_dtype(config.grad_dtype);  // f32 or bf16: checked with the key
  OptimizerOptions oo;
  oo.beta1 = static_cast<float>(config.beta1);
  oo.beta2 = static_cast<float>(config.beta2);
  oo.eps = static_cast<float>(config.eps);
  oo.weight_decay = static_cast<float>(config.weight_decay);
  oo.master_weights = parse_master_weights(config.master_weights);
  oo.stochastic_rounding = config.stochastic_rounding;
  oo.seed = seed;

  say(strf("halo train: %s model from %s, %s parameters; recipe %s, LM head %s; %s (%s)", mc.model_type.c_str(),
           model_source.c_str(), format_count(count_parameters(mc)).c_str(), mo.recipe.name().c_str(),
           mo.lm_head_recipe.name().c_str(), std::string(device_name(device)).c_str(),
           std::string(dtype_name(mo.dtype)).c_str()));
  std::unique_ptr<LlamaModel> model_ptr;
  std::unique_ptr<Optimizer> opt_ptr;
  try {
    model_ptr = std::make_unique<LlamaModel>(mc, mo);
    if (!resume_dir.empty() || !config.model.empty())
      model_ptr->load(model_source);
    else
      model_ptr->init_weights(seed);
    opt_ptr = std::make_unique<Optimizer>(model_ptr->parameters(), oo);  // after the weights: it copies them
  } catch (const Error& e) {
    if (std::string(e.what()).find("out of GPU memory") == std::string::npos) throw;
    HALO_FAIL("not enough GPU memory for the model and its optimizer state: ", e.what(),
              "; try master_weights = \"bf16\" (and grad_dtype = \"bf16\") or a smaller model");
  }
  LlamaModel& model = *model_ptr;
  Optimizer& optimizer = *opt_ptr;
  if (!resume_dir.empty()) {
    optimizer.load_state_dict(load_training_state(resume_dir),
                              (fs::path(resume_dir) / "training_state.safetensors").string());
    batcher.set_position(state.data);
    model.set_backward_passes(state.extra.value("backward_passes", uint64_t{0}));
  }

  const int64_t tokens_per_step = config.batch * config.seq_len * config.grad_accum;
  say(
      strf("data: %s, %lld documents (%lld train, %lld validation), %s training tokens per epoch (%s counted); "
           "%lld x %lld tokens x %lld micro-batches = %s tokens per step; %lld steps",
           config.data.c_str(), static_cast<long long>(train_file.num_docs()),
           static_cast<long long>(train_docs.size()), static_cast<long long>(val_docs.size()),
           format_count(static_cast<double>(batcher.num_tokens())).c_str(),
           format_count(static_cast<double>(batcher.num_targets())).c_str(), static_cast<long long>(config.batch),
           static_cast<long long>(config.seq_len), static_cast<long long>(config.grad_accum),
           format_count(static_cast<double>(tokens_per_step)).c_str(), static_cast<long long>(total_steps)));

  // ---- memory: print the plan, refuse a step the GPU cannot hold ---------------------------
  const int64_t planned = print_memory(say, model.memory(config.batch, config.seq_len), optimizer.memory(), device,
                                       config.recompute, mo.recipe.quantized() || mo.lm_head_recipe.quantized(),
                                       mo.grad_dtype == DType::bf16);
  if (device == Device::cuda) {
    const int64_t free_b = gpu_free_bytes();
    const int64_t held = static_cast<int64_t>(device_memory_stats().reserved);  // already ours, reusable
    if (free_b >= 0) {
      say("  available          " + format_bytes(static_cast<double>(free_b + held)) + "  (free on the GPU, plus " +
          format_bytes(static_cast<double>(held)) + " halo holds)");
      HALO_CHECK(planned <= free_b + held, "not enough GPU memory: one step needs about ",
                 format_bytes(static_cast<double>(planned)), " (breakdown above) but ",
                 format_bytes(static_cast<double>(free_b + held)),
                 " are available; try recompute = true, a smaller batch or seq_len (with grad_accum for the same "
                 "tokens per step), or master_weights = \"bf16\" and grad_dtype = \"bf16\"");
    }
  }

  // ---- the loop -------------------------------------------------------------------------
  make_directories(config.out);
  MetricsWriter metrics((fs::path(config.out) / "metrics.jsonl").string(),
                        resume_dir.empty() ? std::nullopt : std::optional<int64_t>(state.step));
  const std::string config_toml = to_toml(config);
  const DType save_dtype = parse_dtype(config.save_dtype);
  const double flops_per_token = model.train_flops_per_token(config.seq_len);
  const double peak_flops = device == Device::cuda ? gpu_peak_bf16_flops() : 0.0;
  if (device == Device::cuda) {
    const std::vector<GpuInfo> gpus = gpu_info();
    const std::string gpu = gpus.empty() ? std::string("this GPU") : gpus[0].name;
    say(peak_flops > 0 ? strf("MFU: %.3g GFLOP per token over the dense BF16 peak of %s, %.0f TFLOP/s",
                              flops_per_token * 1e-9, gpu.c_str(), peak_flops * 1e-12)
                       : "MFU not shown: no known BF16 peak for " + gpu);
  }

  TrainResult r;
  r.first_step = state.step;
  r.total_steps = total_steps;
  r.val_loss = state.val_loss;
  const int64_t skipped_before = state.skipped_steps;
  double train_seconds = state.extra.value("train_seconds", 0.0);  // over the whole run, for the record
  int64_t last_saved = resume_dir.empty() ? -1 : state.step;
  std::string last_good = resume_dir;  // the newest checkpoint of a good state ("" if none)

  // Lines printed while the loop runs go above the progress bar (on a terminal).
  ProgressBar bar(total_steps, stdout, !options.quiet && isatty(fileno(stdout)));
  const auto log = [&](const std::string& line) {
    if (!options.quiet) bar.print(line);
  };
  const auto save = [&](int64_t step) {
    state.extra["train_seconds"] = train_seconds;
    state.extra["backward_passes"] = model.backward_passes();
    r.checkpoint = save_checkpoint(
        config.out, state, optimizer.state_dict(), config_toml,
        [&](const std::string& dir) {
          model.save(dir, save_dtype);
          copy_tokenizer_files(config, dir);
        },
        config.keep_checkpoints);
    last_saved = step;
    last_good = r.checkpoint;
    log("step " + std::to_string(step) + ": checkpoint " + r.checkpoint);
  };
  const auto run_eval = [&](int64_t step) {
    if (val_docs.empty()) return;
    state.val_loss = r.val_loss = evaluate(model, eval_file, val_docs, config, device);
    metrics.write({{"step", step}, {"val_loss", r.val_loss}});
    log(strf("step %lld: validation loss %.4f", static_cast<long long>(step), r.val_loss));
  };

  SignalGuard signals(options.handle_signals);
  Tensor loss_sum = Tensor::zeros({1}, DType::f32, device);
  double session_seconds = 0.0, interval_seconds = 0.0, interval_loss = 0.0;
  int64_t interval_steps = 0;
  int64_t step = state.step;
  if (step >= total_steps) say("the run is already complete at step " + std::to_string(step));
  int64_t skipped_in_a_row = 0;
  while (step < total_steps && !g_stop_signal) {
    if (options.before_step) options.before_step(model, step);
    const auto t0 = Clock::now();
    std::vector<Batch> micro;  // host batches of this step
    int64_t counted = 0;
    for (int64_t g = 0; g < config.grad_accum; ++g) {
      micro.push_back(batcher.next());
      counted += micro.back().counted;
    }
    model.zero_grad();
    loss_sum.fill_zero();
    const float loss_scale = counted > 0 ? 1.0f / static_cast<float>(counted) : 0.0f;
    for (const Batch& b : micro) model.forward_backward(b.to(device), loss_scale, loss_sum);
    const double lr = schedule.lr_at(step);
    const int64_t skipped_so_far = optimizer.skipped();
    const Tensor norm_sq = optimizer.step(static_cast<float>(lr), static_cast<float>(config.grad_clip));
    const double grad_norm = optimizer.finish_step(norm_sq);  // waits for the step
    const bool skipped = optimizer.skipped() > skipped_so_far;
    const double loss =
        counted > 0 ? static_cast<double>(loss_sum.to_floats()[0]) / static_cast<double>(counted) : kNaN;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    ++step;

    session_seconds += seconds;
    train_seconds += seconds;
    interval_seconds += seconds;
    interval_loss += loss;
    ++interval_steps;
    state.step = step;
    state.data = batcher.position();
    state.tokens += tokens_per_step;
    state.skipped_steps = skipped_before + optimizer.skipped();
    state.loss = loss;
    r.steps = step;
    r.loss = loss;
    r.losses.push_back(loss);
    r.skipped_steps = state.skipped_steps;
    metrics.write({{"step", step},
                   {"loss", loss},
                   {"grad_norm", grad_norm},
                   {"lr", lr},
                   {"tokens", state.tokens},
                   {"tokens_per_s", static_cast<double>(tokens_per_step) / seconds},
                   {"step_ms", seconds * 1e3},
                   {"skipped", skipped}});
    if (counted > 0 && !std::isfinite(loss)) {
      bar.finish();
      HALO_FAIL("step ", step, ": the training loss is ", num(loss), " (lr ", num(lr), ", gradient norm ",
                num(grad_norm), "); stopping without saving this state. ",
                last_good.empty() ? std::string("No checkpoint was saved before it")
                                  : "The last good checkpoint is " + last_good +
                                        " (continue from it with --resume, e.g. with a lower lr)");
    }
    skipped_in_a_row = skipped ? skipped_in_a_row + 1 : 0;
    if (skipped_in_a_row >= kMaxSkippedInARow) {
      bar.finish();
      HALO_FAIL("step ", step, ": the gradients were not finite in ", skipped_in_a_row,
                " steps in a row (each update skipped since step ", step - skipped_in_a_row + 1,
                "); stopping: the weights have likely diverged (lr ", num(lr), "). ",
                last_good.empty() ? std::string("No checkpoint was saved") : "The last checkpoint is " + last_good);
    }
    if (options.on_step) options.on_step(step, loss);

    const double eta =
        session_seconds / static_cast<double>(step - r.first_step) * static_cast<double>(total_steps - step);
    if (step % config.log_interval == 0 || step == total_steps) {
      StepStats s;
      s.step = step;
      s.total_steps = total_steps;
      s.loss = interval_loss / static_cast<double>(interval_steps);
      s.grad_norm = grad_norm;
      s.lr = lr;
      s.tokens_per_s = static_cast<double>(tokens_per_step * interval_steps) / interval_seconds;
      if (peak_flops > 0.0) s.mfu = s.tokens_per_s * flops_per_token / peak_flops;
      s.eta_s = eta;
      s.skipped = skipped;
      log(format_step_line(s));
      interval_seconds = interval_loss = 0.0;
      interval_steps = 0;
    }
    if (!options.quiet) bar.draw(step, eta);
    if ((config.eval_interval > 0 && step % config.eval_interval == 0) || step == total_steps) run_eval(step);
    if ((config.save_interval > 0 && step % config.save_interval == 0) || step == total_steps) save(step);
  }
  if (!options.quiet) bar.finish();
  r.steps = step;
  r.tokens_per_s =
      session_seconds > 0.0 ? static_cast<double>(tokens_per_step * (step - r.first_step)) / session_seconds : 0.0;

  if (g_stop_signal) {
    r.signal = g_stop_signal;
    if (step > r.first_step && last_saved != step) save(step);
    say(std::string("stopped by ") + signal_name(r.signal) + " at step " + std::to_string(step) +
        (last_good.empty() ? std::string(": nothing to save")
                           : "; continue with --resume auto (or --resume " + last_good + ")"));
    return r;
  }
  // The run is complete: the last checkpoint (or the one resumed, when there was nothing left to do) is the model.
  const std::string last_dir = last_saved == step && !last_good.empty() ? last_good : std::string();
  if (!last_dir.empty()) r.final_dir = export_final(config.out, last_dir);
  if (!eval_records.empty()) {
    GenerationSettings settings;
    settings.metric = parse_metric(config.eval_metric);
    settings.max_new_tokens = config.eval_max_new_tokens;
    const ChatTemplate chat_template = config.chat_template == "auto" || config.chat_template == "none"
                                           ? detect_chat_template(*tokenizer, tokenizer_source)
                                           : parse_chat_template(config.chat_template);
    const GenerationResult g = evaluate_generation(model, *tokenizer, chat_template, eval_records, settings);
    const std::string answers = (fs::path(config.out) / "eval.jsonl").string();
    write_generation_records(answers, g.records);
    r.accuracy = g.accuracy;
    metrics.write({{"step", step},
                   {"accuracy", g.accuracy},
                   {"eval_metric", config.eval_metric},
                   {"eval_records", static_cast<int64_t>(g.records.size())}});
    say(strf("eval: %s on %s: %.1f%% (%lld/%lld), answers in %s", config.eval_metric.c_str(),
             config.eval_data.c_str(), 100.0 * g.accuracy, static_cast<long long>(g.correct),
             static_cast<long long>(g.records.size()), answers.c_str()));
  }
  say(strf("done: %lld steps, loss %.4f, validation loss %.4f, %s tokens/s; model in %s", static_cast<long long>(step),
           r.loss, r.val_loss, format_count(r.tokens_per_s).c_str(), r.final_dir.c_str()));
  if (device == Device::cuda)
    say("GPU memory: at most " + format_bytes(static_cast<double>(device_memory_stats().peak)) +
        " held by tensors (planned " + format_bytes(static_cast<double>(planned)) + ")");
  return r;
}

}  // namespace halo
