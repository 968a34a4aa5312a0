// A self-generated fine-tuning task: questions about a small table, answered
// with one SQL statement (`halo data sql` writes it as chat JSONL).
//
//   system:    Answer with one SQL query.
//   user:      Table staff(id, name, salary, age, dept)
//              How many staff have salary greater than 4500?
//   assistant: SELECT COUNT(*) FROM staff WHERE salary > 4500;
//
// Each example draws a table (12 schemas, each under two names, columns in a
// drawn order), one of 14 question templates (count with a filter, select
// columns, filters on a category and on a number, order by + limit, average,
// max, min, sum, group by) and the values in it (numeric thresholds, category
// values, limits). The SQL follows one house style (upper-case keywords,
// 'quoted' strings, a final semicolon) that a base model does not produce
// exactly, and that a short fine-tune learns.
//
// Determinism and held-out test: example i of a split is a function of (seed,
// split, i) only (Philox counters). The test set is drawn first; the training
// set skips every example whose question (the user message) is in the test
// set, and each set has no repeated question.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace halo {

struct SqlExample {
  std::string question;  // "Table t(a, b)\nHow many ...?"
  std::string sql;       // "SELECT ...;"
  std::string kind;      // the template's name, e.g. "count_gt"
};

struct SqlTask {
  std::vector<SqlExample> train, test;
};

// `train` and `test` examples for `seed` (see above). Throws when that many
// distinct questions cannot be drawn.
SqlTask make_sql_task(int64_t train, int64_t test, uint64_t seed);

// The system message of every example: short (fewer tokens than a template's
// default system prompt) and telling a base model what is asked.
inline constexpr const char* kSqlSystemPrompt = "Answer with one SQL query.";

// One JSONL line (no newline): {"messages":[{"role":"system","content":
// kSqlSystemPrompt},{"role":"user","content":...},{"role":"assistant","content":...}]}.
std::string sql_example_jsonl(const SqlExample& e);

// The names of the question templates, in a fixed order.
std::vector<std::string> sql_task_kinds();

}  // namespace halo
