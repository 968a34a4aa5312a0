// halo init: a randomly initialized model directory (config.json and
// model.safetensors, Hugging Face layout) from a config.json, e.g. a tiny
// model to train from scratch or to test with.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
#include "model/llama.h"

namespace halo::cli {

int init(const std::vector<std::string>& argv) {
  Args args(argv, {});
  const std::string config_path = args.get("config", ""), out = args.get("out", "");
  const long long seed = args.get_int("seed", 0);
  const DType dtype = parse_dtype(args.get("dtype", "bf16"));
  args.check_all_used({"config", "out", "seed", "dtype"});
  HALO_CHECK(!config_path.empty(), "init: --config FILE is required (a Hugging Face config.json)");
  HALO_CHECK(!out.empty(), "init: --out DIR is required");
  HALO_CHECK(seed >= 0, "init: --seed must be non-negative, got ", seed);
  HALO_CHECK(dtype == DType::bf16 || dtype == DType::f32, "init: --dtype must be bf16 or f32, got ",
             dtype_name(dtype));

  const ModelConfig config = load_config(config_path);
  // Built on the host in the dtype written: the initialization is a host loop
  // (the same values for a seed whatever the dtype, up to its rounding).
  ModelOptions options;
  options.dtype = dtype;
  LlamaModel model(config, options);
  model.init_weights(static_cast<uint64_t>(seed));
  model.save(out, dtype);
  std::printf("wrote %s: %s model, %lld parameters, %s, seed %lld\n",
              std::filesystem::path(out).string().c_str(), config.model_type.c_str(),
              static_cast<long long>(count_parameters(config)), std::string(dtype_name(dtype)).c_str(), seed);
  return 0;
}

}  // namespace halo::cli
