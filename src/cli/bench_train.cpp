// halo bench train: whole training steps (forward, backward, AdamW with f32
// master weights on the GPU, or bf16 weights and states with --master-weights
// bf16; --grad-dtype bf16 for bf16 weight gradients of the linears) on random
// tokens, per recipe: step time, tokens/s, MFU and peak memory.
// The LM head runs in bf16 unless --lm-head-recipe says otherwise (rows are
// then named RECIPE/head-HEADRECIPE); --lm-head-chunk sets its tokens per
// chunk (default: chosen from the vocabulary size).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/allocator.h"
#include "core/device_info.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/llama.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace halo::cli {

namespace {

struct Row {
  std::string recipe;
  double step_ms = 0, tokens_per_s = 0;
  double mfu = -1;        // a fraction; < 0: unknown peak
  int64_t peak_mem = -1;  // bytes; < 0: not measured
};

// rows x T random tokens, each row one document predicting random next tokens.
Batch random_batch(int64_t rows, int64_t T, int64_t vocab, uint64_t seed) {
  Batch b;
  b.rows = rows;
  b.seq_len = T;
  b.input_ids = Tensor::empty({rows * T}, DType::i32);
  b.targets = Tensor::empty({rows * T}, DType::i32);
  for (int64_t i = 0; i < rows * T; ++i) {
    b.input_ids.data_as<int32_t>()[i] = static_cast<int32_t>(uniform01(seed, 0, i) * vocab) % vocab;
    b.targets.data_as<int32_t>()[i] = static_cast<int32_t>(uniform01(seed, 1, i) * vocab) % vocab;
  }
  b.counted = rows * T;
  return b;
}

// The CPU's "device memory": the process's peak resident set (VmHWM), reset
// by writing 5 to /proc/self/clear_refs. -1 where Linux does not offer it.
bool reset_host_peak() {
  std::ofstream f("/proc/self/clear_refs");
  return f && (f << "5") && f.flush();
}
int64_t host_peak_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // "VmHWM:  1234 kB"
  return -1;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int bench_train(const std::vector<std::string>& argv) {
  Args args(argv, {"recompute", "json"});
  args.check_all_used(
      {"model", "config", "recipe", "batch", "seq-len", "steps", "warmup", "recompute", "device", "json", "seed",
       "master-weights", "grad-dtype", "lm-head-recipe", "lm-head-chunk"});
  const std::string model_dir = args.get("model", ""), config_path = args.get("config", "");
  HALO_CHECK(model_dir.empty() != config_path.empty(),
             "bench train: give --model DIR (a Hugging Face model) or --config FILE (a config.json, random init)");
  const std::string device_arg = args.get("device", cuda_available() ? "cuda" : "cpu");
  HALO_CHECK(device_arg == "cpu" || device_arg == "cuda", "--device: expected cpu or cuda, got '", device_arg, "'");
  const Device device = device_arg == "cuda" ? Device::cuda : Device::cpu;
  HALO_CHECK(device == Device::cpu || cuda_available(), "--device cuda: no usable CUDA device",
             build_info().cuda ? "" : " (this build has no CUDA support)");
  const bool gpu = device == Device::cuda;
  const std::vector<Recipe> recipes =
      parse_recipe_list(args.get("recipe", "bf16,halo1-int8,halo2-int8,halo1-fp8,halo2-fp8"));
  const int64_t batch = args.get_int("batch", gpu ? 4 : 4), seq_len = args.get_int("seq-len", gpu ? 1024 : 128);
  const int64_t steps = args.get_int("steps", gpu ? 10 : 3), warmup = args.get_int("warmup", gpu ? 3 : 1);
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0));
  const bool recompute = args.has("recompute"), json = args.has("json");
  const Recipe lm_head_recipe = parse_recipe(args.get("lm-head-recipe", "bf16"));
  const int64_t lm_head_chunk = args.get_int("lm-head-chunk", 0);
  HALO_CHECK(lm_head_chunk >= 0, "--lm-head-chunk: expected a token count (0: chosen from the vocabulary), got ",
             lm_head_chunk);
  // Rows name the LM head's recipe when it is not the default bf16.
  const std::string head_suffix = lm_head_recipe.quantized() ? "/head-" + lm_head_recipe.name() : "";
  OptimizerOptions optimizer_options;
  optimizer_options.master_weights = parse_master_weights(args.get("master-weights", "fp32"));
  const char* master_name = optimizer_options.master_weights == MasterWeights::fp32 ? "f32" : "bf16";
  const std::string grad_dtype = args.get("grad-dtype", "f32");
  HALO_CHECK(grad_dtype == "f32" || (grad_dtype == "bf16" && gpu),
             "--grad-dtype: expected f32, or bf16 on the GPU; got '", grad_dtype, "' on ", device_arg);
  HALO_CHECK(batch > 0 && seq_len > 0, "--batch and --seq-len must be positive");
  HALO_CHECK(steps > 0 && warmup >= 0, "--steps must be positive and --warmup non-negative");

  const ModelConfig mc = load_config(model_dir.empty() ? config_path : model_dir);
  const Batch host = random_batch(batch, seq_len, mc.vocab_size, seed);
  const double peak_flops = gpu ? gpu_peak_bf16_flops() : 0.0;
  if (!json) {
    const std::vector<GpuInfo> gpus = gpu_info();
    std::printf(
        "halo bench train: %s model (%s parameters) from %s on %s%s, batch %lld x seq_len %lld%s; "
        "median of %lld steps after %lld warm-up, each forward + backward + AdamW%s\n",
        mc.model_type.c_str(), format_count(static_cast<double>(count_parameters(mc))).c_str(),
        model_dir.empty() ? (config_path + ", random init").c_str() : model_dir.c_str(), device_arg.c_str(),
        gpu && !gpus.empty() ? (" (" + gpus[0].name + ", bf16)").c_str() : " (f32)", static_cast<long long>(batch),
        static_cast<long long>(seq_len), recompute ? ", recompute" : "", static_cast<long long>(steps),
        static_cast<long long>(warmup),
        gpu ? (std::string(" (") + master_name + " master weights, " + grad_dtype + " gradients)").c_str() : "");
  }

  std::vector<Row> rows;
  for (const Recipe& recipe : recipes) {
    if (gpu) {
      empty_device_cache();
      reset_peak_device_memory();
    }
    const bool host_peak = !gpu && reset_host_peak();
    Row row;
    row.recipe = recipe.name() + head_suffix;
    {
      ModelOptions mo;
      mo.recipe = recipe;
      mo.lm_head_recipe = lm_head_recipe;
      mo.lm_head_chunk = lm_head_chunk;
      mo.device = device;
      mo.dtype = gpu ? DType::bf16 : DType::f32;
      mo.recompute = recompute;
      mo.seed = seed;
      mo.grad_dtype = parse_dtype(grad_dtype);
      LlamaModel model(mc, mo);
      if (model_dir.empty())
        model.init_weights(seed);
      else
        model.load(model_dir);
      Optimizer optimizer(model.parameters(), optimizer_options);
      const Batch b = host.to(device);
      Tensor loss = Tensor::zeros({1}, DType::f32, device);
      std::vector<double> ms;
      for (int64_t i = 0; i < warmup + steps; ++i) {
        const bool last = i == warmup + steps - 1;  // the step a profiler records (--profile-from-start off)
        if (last) gpu_profiler_start();
        const auto t0 = std::chrono::steady_clock::now();
        model.zero_grad();
        loss.fill_zero();
        model.forward_backward(b, 1.0f / static_cast<float>(b.counted), loss);
        optimizer.finish_step(optimizer.step(1e-5f, 1.0f));  // waits for the GPU
        device_synchronize();
        if (last) gpu_profiler_stop();
        const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (i >= warmup) ms.push_back(t);
      }
      row.step_ms = median(ms);
      row.tokens_per_s = static_cast<double>(batch * seq_len) / (row.step_ms * 1e-3);
      if (peak_flops > 0) row.mfu = row.tokens_per_s * model.train_flops_per_token(seq_len) / peak_flops;
      row.peak_mem = gpu ? static_cast<int64_t>(device_memory_stats().peak) : host_peak ? host_peak_bytes() : -1;
    }
    rows.push_back(row);
    if (json) {
      std::printf(
          "{\"recipe\": \"%s\", \"device\": \"%s\", \"batch\": %lld, \"seq_len\": %lld, \"recompute\": %s, "
          "\"master_weights\": \"%s\", \"grad_dtype\": \"%s\", \"step_ms\": %.6g, \"tokens_per_s\": %.6g, "
          "\"mfu\": %s, \"peak_mem_bytes\": %s}\n",
          row.recipe.c_str(), device_arg.c_str(), static_cast<long long>(batch), static_cast<long long>(seq_len),
          recompute ? "true" : "false", master_name, grad_dtype.c_str(), row.step_ms, row.tokens_per_s,
          row.mfu >= 0 ? std::to_string(row.mfu).c_str() : "null",
          row.peak_mem >= 0 ? std::to_string(row.peak_mem).c_str() : "null");
    }
  }
  if (json) return 0;
  std::printf("%-22s %10s %12s %8s %12s %9s\n", "recipe", "step ms", "tokens/s", "MFU", "peak mem", "vs bf16");
  const auto base = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.recipe == "bf16" + head_suffix; });
  for (const Row& r : rows) {
    char mfu[16] = "-", speed[16] = "-";
    if (r.mfu >= 0) std::snprintf(mfu, sizeof mfu, "%.1f%%", 100.0 * r.mfu);
    if (base != rows.end()) std::snprintf(speed, sizeof speed, "%.2fx", base->step_ms / r.step_ms);
    std::printf("%-22s %10.2f %12s %8s %12s %9s\n", r.recipe.c_str(), r.step_ms, format_count(r.tokens_per_s).c_str(),
                mfu, r.peak_mem >= 0 ? format_bytes(static_cast<double>(r.peak_mem)).c_str() : "-", speed);
  }
  std::printf("MFU: model FLOPs (train_flops_per_token) per second over the GPU's dense BF16 peak%s; peak mem: %s\n",
              peak_flops > 0 ? "" : " (not shown: CPU or unknown GPU)",
              gpu ? "the most GPU memory held by tensors during the recipe"
                  : "the process's peak resident set during the recipe");
  return 0;
}

}  // namespace halo::cli
