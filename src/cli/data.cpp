// halo data synth: a learnable synthetic token file (data/synthetic.h) for
// trying the trainer without a tokenizer or a dataset; the usage of the other
// data subcommands (sql, jsonl) and the dispatch to them.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "data/synthetic.h"
#include "data/token_data.h"

namespace halo::cli {

namespace {

const char* kDataUsage =
    "usage: halo data synth --out FILE [--docs N] [--vocab V] [--seed S] [--min-len L] [--max-len L]\n"
    "  writes a token file of N documents (default 1000) of counting and repeated-motif patterns\n"
    "  over a vocabulary of V tokens (default 256), lengths uniform in [min-len, max-len] (16, 128)\n"
    "usage: halo data sql --out DIR [--train N] [--test N] [--seed S]\n"
    "  writes DIR/train.jsonl (default 2000) and DIR/test.jsonl (200) of chat examples: a question\n"
    "  about a table answered with SQL (data/sql_task.h); the test questions are not in train\n"
    "usage: halo data jsonl --input FILE.jsonl --tokenizer MODEL_DIR --out FILE.tok\n"
    "                       [--template auto|none|llama3|chatml|llama2|mistral] [--loss assistant|all]\n"
    "  tokenizes {\"messages\"}, {\"prompt\", \"completion\"} or {\"text\"} records (data/jsonl.h) with\n"
    "  the model's tokenizer and chat template into a token file whose loss counts only the\n"
    "  answers (--loss all: every token); prints the records, tokens and counted tokens\n";

int synth(const std::vector<std::string>& argv) {
  Args args(argv, {});
  const std::string out = args.get("out", "");
  const long long docs = args.get_int("docs", 1000), vocab = args.get_int("vocab", 256), seed = args.get_int("seed", 0),
                  min_len = args.get_int("min-len", 16), max_len = args.get_int("max-len", 128);
  args.check_all_used({"out", "docs", "vocab", "seed", "min-len", "max-len"});
  HALO_CHECK(!out.empty(), "data synth: --out FILE is required");
  HALO_CHECK(seed >= 0, "data synth: --seed must be non-negative, got ", seed);
  const auto all = synthetic_documents(docs, vocab, static_cast<uint64_t>(seed), min_len, max_len);
  long long tokens = 0;
  for (const auto& d : all) tokens += static_cast<long long>(d.size());
  write_token_file(out, all, static_cast<uint32_t>(vocab));
  std::printf("wrote %s: %lld documents, %lld tokens, vocabulary %lld, seed %lld\n", out.c_str(), docs, tokens, vocab,
              seed);
  return 0;
}

}  // namespace

int data(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::fputs(kDataUsage, argv.empty() ? stderr : stdout);
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] == "synth") return synth({argv.begin() + 1, argv.end()});
  if (argv[0] == "sql") return data_sql({argv.begin() + 1, argv.end()});  // data_sql.cpp
  if (argv[0] == "jsonl") return data_jsonl({argv.begin() + 1, argv.end()});  // data_jsonl.cpp
  std::fprintf(stderr, "halo data: unknown subcommand '%s'\n\n%s", argv[0].c_str(), kDataUsage);
  return 2;
}

}  // namespace halo::cli
