// halo data jsonl: a JSONL file of chat, prompt / completion or text records
// (data/jsonl.h) tokenized into a token file with a loss mask (data/token_data.h).
#include <cstdio>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "data/jsonl.h"
#include "data/token_data.h"
#include "text/tokenizer.h"

namespace halo::cli {

int data_jsonl(const std::vector<std::string>& argv) {
  Args args(argv, {});
  const std::string input = args.get("input", ""), tokenizer_dir = args.get("tokenizer", ""), out = args.get("out", "");
  JsonlOptions options;
  options.chat_template = args.get("template", "auto");
  const std::string loss = args.get("loss", "assistant");
  args.check_all_used({"input", "tokenizer", "out", "template", "loss"});
  HALO_CHECK(!input.empty() && !tokenizer_dir.empty() && !out.empty(),
             "data jsonl: --input FILE.jsonl, --tokenizer MODEL_DIR and --out FILE.tok are required (usage: halo "
             "data jsonl --input FILE.jsonl --tokenizer MODEL_DIR --out FILE.tok [--template "
             "auto|none|llama3|chatml|llama2|mistral] [--loss assistant|all])");
  options.loss = parse_loss_on(loss);
  check_template_choice(options.chat_template);
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_dir);
  const JsonlDocuments d = read_jsonl_documents(input, tokenizer, options);
  HALO_CHECK(!d.docs.empty(), input, ": no record with a target to train on (", describe(d), ")");
  write_token_file(out, d.docs, d.masks, tokenizer.vocab_size());
  std::printf("wrote %s: %s; loss on %s tokens, vocabulary %u\n", out.c_str(), describe(d).c_str(),
              std::string(loss_on_name(options.loss)).c_str(), tokenizer.vocab_size());
  return 0;
}

}  // namespace halo::cli
