// halo: fine-tuning with 8-bit matmuls made accurate by Hadamard rotations.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

const char* kUsage =
    "usage: halo <command> [options]\n"
    "\n"
    "commands:\n"
    "  train          train or fine-tune a model (halo train --help lists the config keys)\n"
    "                 [--config run.toml] [--resume DIR|auto] [--key value ...]\n"
    "  bench train    whole training steps per recipe on random tokens: step time, tokens/s, MFU, memory\n"
    "                 --model DIR | --config config.json [--recipe R1,R2,...] [--batch B] [--seq-len T]\n"
    "                 [--steps N] [--warmup W] [--recompute] [--master-weights fp32|bf16] [--grad-dtype f32|bf16]\n"
    "                 [--lm-head-recipe R] [--lm-head-chunk TOKENS] [--device cpu|cuda] [--json]\n"
    "  bench linear   speed and accuracy of the HALO linear layer per recipe\n"
    "                 --device cpu|cuda --recipe R1,R2,... --shape M,N,K [--outliers] [--bias]\n"
    "                 [--json] [--warmup N] [--iters N] [--seed S]\n"
    "  bench kernels  memory-bound kernels against the copy bandwidth, GEMMs per format\n"
    "                 --device cpu|cuda --shape M,N,K [--warmup N] [--iters N]\n"
    "  doctor         the build, the GPU, and every CUDA kernel checked against the CPU\n"
    "                 [--full] (Llama sizes)  [--probe] (print the best device)\n"
    "  init           a random-init model directory (Hugging Face layout) from a config.json\n"
    "                 --config FILE --out DIR [--seed S] [--dtype bf16|f32]\n"
    "  data synth     a learnable synthetic token file for trying the trainer\n"
    "                 --out FILE [--docs N] [--vocab V] [--seed S] [--min-len L] [--max-len L]\n"
    "  data sql       a chat JSONL task: questions about a table answered with SQL (train/test)\n"
    "                 --out DIR [--train N] [--test N] [--seed S]\n"
    "  data jsonl     chat / prompt-completion / text JSONL as a token file whose loss counts the answers\n"
    "                 --input FILE.jsonl --tokenizer MODEL_DIR --out FILE.tok [--template NAME] [--loss assistant|all]\n"
    "  eval           a model on chat JSONL records: loss, or generated answers scored by a metric\n"
    "                 --model DIR --data FILE.jsonl --metric loss|exact|sql|gsm8k|viggo\n"
    "                 [--max-new-tokens N] [--limit N] [--output results.jsonl] [--device cpu|cuda] [--batch N]\n"
    "                 [--tokenizer DIR] [--template NAME] [--json]\n"
    "  report         an HTML page of runs (loss curves) and evaluations (accuracy, examples)\n"
    "                 --run NAME=RUN_DIR ... --eval NAME=results.jsonl ... --out report.html\n"
    "  convert        a llama.cpp GGUF file as a Hugging Face model directory\n"
    "                 MODEL.gguf --out DIR [--dtype bf16|f32]\n"
    "  logits         the logits of a model directory for fixed token ids (to compare)\n"
    "                 --model DIR --ids 1,2,3 --out FILE.safetensors [--device cpu|cuda]\n"
    "  generate       text from a model directory with a key/value cache (chat template unless --raw)\n"
    "                 --model DIR (--prompt TEXT | --input FILE.jsonl) [--max-new-tokens N]\n"
    "                 [--temperature T] [--top-p P] [--seed S] [--device cpu|cuda] [--raw]\n"
    "                 [--template NAME] [--output FILE.jsonl] [--batch N]\n"
    "  tokenize       encode text with a tokenizer.json: the tokens and ids, or for a file the rate\n"
    "                 --tokenizer DIR|FILE (--text STRING | --file F [--lines] [--threads N])\n"
    "                 [--ids] [--no-special] [--add-special]\n"
    "\n"
    "recipes: bf16, halo{0,1,2}-{int8,fp8}, ideal-{int8,fp8}; options after '+':\n"
    "         tensor|row|1x128|128x128 (scales), e5m2 (gradients), sr (stochastic rounding), sim\n";

// The lines of kUsage that describe `name` ("eval", "bench train"): its own
// line and the indented lines under it; "" when kUsage has none.
std::string command_usage(const std::string& name) {
  const std::string text = kUsage, head = "  " + name + " ";
  std::string out;
  size_t pos = 0;
  bool inside = false;
  while (pos < text.size()) {
    const size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos + 1);
    pos = end + 1;
    if (line.rfind(head, 0) == 0)
      inside = true;
    else if (line.rfind("                 ", 0) != 0)
      inside = false;
    if (inside) out += line;
  }
  return out;
}

bool asks_for_help(const std::vector<std::string>& args) {
  for (const std::string& a : args)
    if (a == "--help" || a == "-h") return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines appear as they happen, even in a pipe
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  try {
    const std::string cmd = args[0];
    // `halo train --help` and `halo data --help` print their own, longer help.
    if (cmd != "train" && cmd != "data" && asks_for_help(args)) {
      const std::string usage =
          command_usage(cmd == "bench" && args.size() >= 2 ? cmd + " " + args[1] : cmd);
      if (!usage.empty()) {
        std::fputs(("usage: halo <command> [options]\n" + usage).c_str(), stdout);
        return 0;
      }
    }
    if (cmd == "bench" && args.size() >= 2 && args[1] == "linear")
      return halo::cli::bench_linear({args.begin() + 2, args.end()});
    if (cmd == "bench" && args.size() >= 2 && args[1] == "kernels")
      return halo::cli::bench_kernels({args.begin() + 2, args.end()});
    if (cmd == "bench" && args.size() >= 2 && args[1] == "train")
      return halo::cli::bench_train({args.begin() + 2, args.end()});
    if (cmd == "train") return halo::cli::train({args.begin() + 1, args.end()});
    if (cmd == "data") return halo::cli::data({args.begin() + 1, args.end()});
    if (cmd == "doctor") return halo::cli::doctor({args.begin() + 1, args.end()});
    if (cmd == "init") return halo::cli::init({args.begin() + 1, args.end()});
    if (cmd == "convert") return halo::cli::convert({args.begin() + 1, args.end()});
    if (cmd == "logits") return halo::cli::logits({args.begin() + 1, args.end()});
    if (cmd == "tokenize") return halo::cli::tokenize({args.begin() + 1, args.end()});
    if (cmd == "generate") return halo::cli::generate({args.begin() + 1, args.end()});
    if (cmd == "eval") return halo::cli::eval({args.begin() + 1, args.end()});
    if (cmd == "report") return halo::cli::report({args.begin() + 1, args.end()});
    std::fprintf(stderr, "halo: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "halo: error: %s\n", e.what());
    return 1;
  }
}
