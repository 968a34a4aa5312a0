// halo convert: a llama.cpp GGUF file as a Hugging Face model directory
// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
// halo logits: the logits of a model directory for fixed token ids, written to
// a safetensors file, to compare the import against other implementations
// (scripts/check_gguf_logits.py).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/batch.h"
#include "model/gguf_import.h"
#include "model/llama.h"

namespace halo::cli {

int convert(const std::vector<std::string>& argv) {
  // The one positional argument: the GGUF file.
  std::string input;
  std::vector<std::string> rest;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (input.empty() && !argv[i].starts_with("--") && (i == 0 || !argv[i - 1].starts_with("--") ||
                                                        argv[i - 1].find('=') != std::string::npos)) {
      input = argv[i];
      continue;
    }
    rest.push_back(argv[i]);
  }
  Args args(rest, {});
  const std::string out = args.get("out", "");
  const DType dtype = parse_dtype(args.get("dtype", "bf16"));
  args.check_all_used({"out", "dtype"});
  HALO_CHECK(!input.empty(), "convert: usage: halo convert MODEL.gguf --out DIR [--dtype bf16|f32]");
  HALO_CHECK(!out.empty(), "convert: --out DIR is required");
  HALO_CHECK(dtype == DType::bf16 || dtype == DType::f32, "convert: --dtype must be bf16 or f32, got ",
             dtype_name(dtype));
  GgufConvertOptions options;
  options.dtype = dtype;
  options.log = [](const std::string& line) { std::printf("%s\n", line.c_str()); };
  const GgufConvertResult r = convert_gguf(input, out, options);
  if (!r.tokenizer_note.empty())
    std::fprintf(stderr, "halo convert: warning: no tokenizer written: %s\n", r.tokenizer_note.c_str());
  std::printf("wrote %s:", out.c_str());
  for (const std::string& f : r.files) std::printf(" %s", f.c_str());
  std::printf("\n");
  return 0;
}

int logits(const std::vector<std::string>& argv) {
  Args args(argv, {});
  const std::string model_dir = args.get("model", ""), ids_text = args.get("ids", ""), out = args.get("out", "");
  const std::string device = args.get("device", "cpu");
  args.check_all_used({"model", "ids", "out", "device"});
  HALO_CHECK(!model_dir.empty() && !ids_text.empty() && !out.empty(),
             "logits: usage: halo logits --model DIR --ids 1,2,3 --out FILE.safetensors [--device cpu|cuda]");
  HALO_CHECK(device == "cpu" || device == "cuda", "logits: --device must be cpu or cuda, got '", device, "'");

  std::vector<int32_t> ids;
  for (size_t start = 0; start <= ids_text.size();) {
    const size_t comma = ids_text.find(',', start);
    const std::string part = ids_text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    HALO_CHECK(!part.empty() && *end == 0 && v >= 0 && v <= INT32_MAX, "logits: --ids: expected token ids ",
               "separated by commas, got '", ids_text, "'");
    ids.push_back(static_cast<int32_t>(v));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }

  const ModelConfig config = load_config(model_dir);
  for (int32_t id : ids)
    HALO_CHECK(id < config.vocab_size, "logits: token id ", id, " is outside the vocabulary of ", config.vocab_size);
  ModelOptions options;
  options.device = device == "cuda" ? Device::cuda : Device::cpu;
  options.dtype = device == "cuda" ? DType::bf16 : DType::f32;
  LlamaModel model(config, options);
  model.load(model_dir);

  // One row, one document, positions 0..T-1; no targets.
  const int64_t T = static_cast<int64_t>(ids.size());
  const auto i32 = [&](auto value) {
    Tensor t = Tensor::empty({T}, DType::i32);
    for (int64_t i = 0; i < T; ++i) t.data_as<int32_t>()[i] = value(i);
    return t;
  };
  const Batch batch{1, T, i32([&](int64_t i) { return ids[static_cast<size_t>(i)]; }), i32([](int64_t) { return -100; }),
                    i32([](int64_t i) { return static_cast<int32_t>(i); }), i32([](int64_t) { return 0; }), 0};
  const Tensor logits = model.logits(batch.to(options.device)).to(Device::cpu);
  write_safetensors(out, {{"logits", logits}, {"input_ids", batch.input_ids}});

  const std::vector<float> v = logits.to_floats();
  const int64_t V = config.vocab_size;
  bool finite = true;
  for (float x : v) finite &= std::isfinite(x);
  std::printf("logits [%lld, %lld] %s (%s, %s) -> %s%s\nargmax per position:", static_cast<long long>(T),
              static_cast<long long>(V), model_dir.c_str(), device.c_str(),
              std::string(dtype_name(options.dtype)).c_str(), out.c_str(), finite ? "" : " (NOT FINITE)");
  for (int64_t t = 0; t < T; ++t) {
    int64_t best = 0;
    for (int64_t j = 1; j < V; ++j)
      if (v[t * V + j] > v[t * V + best]) best = j;
    std::printf(" %lld", static_cast<long long>(best));
  }
  std::printf("\n");
  return finite ? 0 : 1;
}

}  // namespace halo::cli
