// halo data sql: the self-generated SQL task (data/sql_task.h) as chat JSONL,
// DIR/train.jsonl and DIR/test.jsonl.
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "data/sql_task.h"
#include "io/atomic_file.h"

namespace halo::cli {

int data_sql(const std::vector<std::string>& argv) {
  Args args(argv, {});
  const std::string out = args.get("out", "");
  const long long train = args.get_int("train", 2000), test = args.get_int("test", 200),
                  seed = args.get_int("seed", 0);
  args.check_all_used({"out", "train", "test", "seed"});
  HALO_CHECK(!out.empty(), "data sql: --out DIR is required (usage: halo data sql --out DIR [--train N] ",
             "[--test N] [--seed S])");
  HALO_CHECK(train > 0 && test > 0, "data sql: --train and --test must be positive, got ", train, " and ", test);
  HALO_CHECK(seed >= 0, "data sql: --seed must be non-negative, got ", seed);
  const SqlTask task = make_sql_task(train, test, static_cast<uint64_t>(seed));
  std::filesystem::create_directories(out);
  std::map<std::string, int> kinds;
  for (const auto& [name, examples] : {std::pair{"train.jsonl", &task.train}, std::pair{"test.jsonl", &task.test}}) {
    std::string text;
    for (const SqlExample& e : *examples) {
      text += sql_example_jsonl(e) + "\n";
      kinds[e.kind] += 1;
    }
    write_file_atomic((std::filesystem::path(out) / name).string(), text);
  }
  std::printf("wrote %s/train.jsonl (%lld examples) and %s/test.jsonl (%lld, no question shared with train), "
              "seed %lld, %zu question kinds\n",
              out.c_str(), train, out.c_str(), test, seed, kinds.size());
  return 0;
}

}  // namespace halo::cli
