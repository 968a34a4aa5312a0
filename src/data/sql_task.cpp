#include "data/sql_task.h"

#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/rng.h"

namespace halo {

namespace {

struct NumberColumn {
  const char* name;
  int64_t lo, hi, step;  // thresholds are lo, lo + step, ..., <= hi
};

struct TableSchema {
  const char* names[2];  // the table is called either (the question's noun too)
  const char* label;     // the column naming a row
  NumberColumn numbers[2];
  const char* category;
  std::vector<const char*> values;  // of the category column
};

const std::vector<TableSchema>& schemas() {
  static const std::vector<TableSchema> s = {
      {{"employees", "staff"}, "name", {{"salary", 2000, 9000, 500}, {"age", 20, 65, 1}}, "dept",
       {"sales", "hr", "engineering", "finance", "support"}},
      {{"products", "items"}, "title", {{"price", 5, 500, 5}, {"stock", 0, 200, 10}}, "category",
       {"toys", "books", "garden", "kitchen", "sports"}},
      {{"students", "pupils"}, "name", {{"grade", 50, 100, 1}, {"age", 10, 18, 1}}, "city",
       {"Paris", "Lima", "Oslo", "Cairo", "Tokyo"}},
      {{"books", "novels"}, "title", {{"pages", 100, 900, 10}, {"year", 1950, 2023, 1}}, "genre",
       {"fantasy", "history", "poetry", "science", "crime"}},
      {{"cars", "vehicles"}, "model", {{"price", 5000, 60000, 1000}, {"mileage", 1000, 150000, 1000}}, "brand",
       {"ford", "fiat", "audi", "kia", "volvo"}},
      {{"movies", "films"}, "title", {{"rating", 1, 10, 1}, {"runtime", 80, 180, 5}}, "genre",
       {"drama", "comedy", "horror", "action", "western"}},
      {{"cities", "towns"}, "name", {{"population", 10000, 900000, 5000}, {"area", 10, 800, 10}}, "country",
       {"France", "Peru", "Norway", "Egypt", "Japan"}},
      {{"orders", "purchases"}, "customer", {{"amount", 10, 990, 10}, {"quantity", 1, 20, 1}}, "status",
       {"shipped", "pending", "returned", "cancelled"}},
      {{"players", "athletes"}, "name", {{"score", 0, 100, 1}, {"goals", 0, 40, 1}}, "team",
       {"red", "blue", "green", "gold"}},
      {{"flights", "trips"}, "code", {{"price", 50, 1500, 50}, {"duration", 1, 14, 1}}, "airline",
       {"delta", "klm", "qantas", "emirates"}},
      {{"songs", "tracks"}, "title", {{"plays", 100, 90000, 100}, {"length", 120, 420, 10}}, "artist",
       {"adele", "queen", "abba", "drake", "muse"}},
      {{"hotels", "inns"}, "name", {{"stars", 1, 5, 1}, {"rooms", 10, 400, 10}}, "region",
       {"north", "south", "east", "west"}},
  };
  return s;
}

// Draws from the Philox stream (seed, stream) one value after another.
class Draw {
 public:
  Draw(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  int64_t below(int64_t n) {  // uniform in [0, n)
    const uint32_t bits = philox4x32(seed_, counter_++, stream_).v[0];
    return static_cast<int64_t>((static_cast<uint64_t>(bits) * static_cast<uint64_t>(n)) >> 32);
  }
  template <class T>
  const T& pick(const std::vector<T>& v) { return v[static_cast<size_t>(below(static_cast<int64_t>(v.size())))]; }

 private:
  uint64_t seed_, stream_, counter_ = 0;
};

const std::vector<std::string> kKinds = {"count_gt",  "count_lt",   "count_cat", "select_cat", "select_cols",
                                         "top_k",     "bottom_k",   "avg",       "avg_cat",    "max",
                                         "min_cat",   "sum_cat",    "group_count", "filter_and"};

// Example `index` of a split: everything drawn from (seed, stream = 2 * index + split).
SqlExample draw_example(uint64_t seed, int split, int64_t index) {
  Draw d(seed, 2 * static_cast<uint64_t>(index) + static_cast<uint64_t>(split));
  const TableSchema& s = d.pick(schemas());
  const std::string table = s.names[d.below(2)];
  const NumberColumn& num = s.numbers[d.below(2)];
  const std::string n = num.name, l = s.label, c = s.category;
  const std::string value = d.pick(s.values);
  const int64_t threshold = num.lo + num.step * d.below((num.hi - num.lo) / num.step + 1);
  const std::string v = std::to_string(threshold);
  const std::string k = std::to_string(2 + d.below(9));  // LIMIT 2..10

  // The schema line: id first, the other four columns in a drawn order.
  std::vector<std::string> cols = {l, s.numbers[0].name, s.numbers[1].name, c};
  for (size_t i = cols.size() - 1; i > 0; --i) std::swap(cols[i], cols[static_cast<size_t>(d.below(int64_t(i) + 1))]);
  std::string schema = "Table " + table + "(id";
  for (const std::string& col : cols) schema += ", " + col;
  schema += ")\n";

  SqlExample e;
  e.kind = kKinds[static_cast<size_t>(d.below(static_cast<int64_t>(kKinds.size())))];
  std::string q;
  const std::string& kd = e.kind;
  if (kd == "count_gt") {
    q = "How many " + table + " have " + n + " greater than " + v + "?";
    e.sql = "SELECT COUNT(*) FROM " + table + " WHERE " + n + " > " + v + ";";
  } else if (kd == "count_lt") {
    q = "How many " + table + " have " + n + " below " + v + "?";
    e.sql = "SELECT COUNT(*) FROM " + table + " WHERE " + n + " < " + v + ";";
  } else if (kd == "count_cat") {
    q = "How many " + table + " have " + c + " " + value + "?";
    e.sql = "SELECT COUNT(*) FROM " + table + " WHERE " + c + " = '" + value + "';";
  } else if (kd == "select_cat") {
    q = "List the " + l + " of " + table + " whose " + c + " is " + value + ".";
    e.sql = "SELECT " + l + " FROM " + table + " WHERE " + c + " = '" + value + "';";
  } else if (kd == "select_cols") {
    q = "Show the " + l + " and " + n + " of all " + table + ".";
    e.sql = "SELECT " + l + ", " + n + " FROM " + table + ";";
  } else if (kd == "top_k") {
    q = "Which " + k + " " + table + " have the highest " + n + "? Give their " + l + ".";
    e.sql = "SELECT " + l + " FROM " + table + " ORDER BY " + n + " DESC LIMIT " + k + ";";
  } else if (kd == "bottom_k") {
    q = "List the " + l + " of the " + k + " " + table + " with the lowest " + n + ".";
    e.sql = "SELECT " + l + " FROM " + table + " ORDER BY " + n + " ASC LIMIT " + k + ";";
  } else if (kd == "avg") {
    q = "What is the average " + n + " of " + table + "?";
    e.sql = "SELECT AVG(" + n + ") FROM " + table + ";";
  } else if (kd == "avg_cat") {
    q = "What is the average " + n + " of " + table + " whose " + c + " is " + value + "?";
    e.sql = "SELECT AVG(" + n + ") FROM " + table + " WHERE " + c + " = '" + value + "';";
  } else if (kd == "max") {
    q = "What is the highest " + n + " among " + table + "?";
    e.sql = "SELECT MAX(" + n + ") FROM " + table + ";";
  } else if (kd == "min_cat") {
    q = "What is the lowest " + n + " of " + table + " whose " + c + " is " + value + "?";
    e.sql = "SELECT MIN(" + n + ") FROM " + table + " WHERE " + c + " = '" + value + "';";
  } else if (kd == "sum_cat") {
    q = "What is the total " + n + " of " + table + " whose " + c + " is " + value + "?";
    e.sql = "SELECT SUM(" + n + ") FROM " + table + " WHERE " + c + " = '" + value + "';";
  } else if (kd == "group_count") {
    q = "How many " + table + " are there for each " + c + "?";
    e.sql = "SELECT " + c + ", COUNT(*) FROM " + table + " GROUP BY " + c + ";";
  } else {  // filter_and
    q = "List the " + l + " of " + table + " whose " + c + " is " + value + " and " + n + " is above " + v + ".";
    e.sql = "SELECT " + l + " FROM " + table + " WHERE " + c + " = '" + value + "' AND " + n + " > " + v + ";";
  }
  e.question = schema + q;
  return e;
}

// `count` distinct questions of `split`, none in `exclude`.
std::vector<SqlExample> draw_split(int64_t count, uint64_t seed, int split, const std::set<std::string>& exclude) {
  std::vector<SqlExample> out;
  std::set<std::string> seen;
  const int64_t max_draws = 50 * count + 1000;
  for (int64_t i = 0; static_cast<int64_t>(out.size()) < count; ++i) {
    HALO_CHECK(i < max_draws, "sql task: could not draw ", count, " distinct ", split == 0 ? "training" : "test",
               " questions (", out.size(), " after ", max_draws, " draws); ask for fewer");
    SqlExample e = draw_example(seed, split, i);
    if (exclude.count(e.question) || !seen.insert(e.question).second) continue;
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

std::vector<std::string> sql_task_kinds() { return kKinds; }

SqlTask make_sql_task(int64_t train, int64_t test, uint64_t seed) {
  HALO_CHECK(train >= 0 && test >= 0, "sql task: example counts must be non-negative, got train ", train,
             ", test ", test);
  SqlTask task;
  task.test = draw_split(test, seed, 1, {});
  std::set<std::string> held_out;
  for (const SqlExample& e : task.test) held_out.insert(e.question);
  task.train = draw_split(train, seed, 0, held_out);
  return task;
}

std::string sql_example_jsonl(const SqlExample& e) {
  nlohmann::ordered_json j;
  j["messages"] = nlohmann::ordered_json::array(
      {nlohmann::ordered_json{{"role", "system"}, {"content", kSqlSystemPrompt}},
       nlohmann::ordered_json{{"role", "user"}, {"content", e.question}},
       nlohmann::ordered_json{{"role", "assistant"}, {"content", e.sql}}});
  return j.dump();
}

}  // namespace halo
