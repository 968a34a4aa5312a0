#include "train/run_config.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <variant>

#define TOML_HEADER_ONLY 1
#include <toml++/toml.h>

#include "core/error.h"
#include "halo/recipe.h"
#include "io/atomic_file.h"
#include "train/schedule.h"

namespace halo {

namespace {

using Member = std::variant<std::string TrainConfig::*, int64_t TrainConfig::*, double TrainConfig::*,
                            bool TrainConfig::*>;
struct Key {
  const char* name;
  Member member;
};

// Every key, in the order of the header (and of to_toml).
const std::vector<Key>& keys() {
  static const std::vector<Key> k{
      {"model", &TrainConfig::model},
      {"init", &TrainConfig::init},
      {"recipe", &TrainConfig::recipe},
      {"lm_head_recipe", &TrainConfig::lm_head_recipe},
      {"data", &TrainConfig::data},
      {"val_data", &TrainConfig::val_data},
      {"val_fraction", &TrainConfig::val_fraction},
      {"tokenizer", &TrainConfig::tokenizer},
      {"template", &TrainConfig::chat_template},
      {"loss_on", &TrainConfig::loss_on},
      {"packing", &TrainConfig::packing},
      {"steps", &TrainConfig::steps},
      {"epochs", &TrainConfig::epochs},
      {"batch", &TrainConfig::batch},
      {"seq_len", &TrainConfig::seq_len},
      {"grad_accum", &TrainConfig::grad_accum},
      {"lr", &TrainConfig::lr},
      {"min_lr_ratio", &TrainConfig::min_lr_ratio},
      {"schedule", &TrainConfig::schedule},
      {"warmup_steps", &TrainConfig::warmup_steps},
      {"weight_decay", &TrainConfig::weight_decay},
      {"beta1", &TrainConfig::beta1},
      {"beta2", &TrainConfig::beta2},
      {"eps", &TrainConfig::eps},
      {"grad_clip", &TrainConfig::grad_clip},
      {"master_weights", &TrainConfig::master_weights},
      {"grad_dtype", &TrainConfig::grad_dtype},
      {"stochastic_rounding", &TrainConfig::stochastic_rounding},
      {"recompute", &TrainConfig::recompute},
      {"eval_interval", &TrainConfig::eval_interval},
      {"eval_batches", &TrainConfig::eval_batches},
      {"eval_data", &TrainConfig::eval_data},
      {"eval_metric", &TrainConfig::eval_metric},
      {"eval_max_new_tokens", &TrainConfig::eval_max_new_tokens},
      {"save_interval", &TrainConfig::save_interval},
      {"keep_checkpoints", &TrainConfig::keep_checkpoints},
      {"out", &TrainConfig::out},
      {"seed", &TrainConfig::seed},
      {"device", &TrainConfig::device},
      {"log_interval", &TrainConfig::log_interval},
      {"save_dtype", &TrainConfig::save_dtype},
  };
  return k;
}

const Key* find_key(std::string_view name) {
  for (const Key& k : keys())
    if (name == k.name) return &k;
  return nullptr;
}

std::string known_keys() {
  std::string s;
  for (const Key& k : keys()) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

const char* type_name(const Member& m) {
  if (std::holds_alternative<std::string TrainConfig::*>(m)) return "a string";
  if (std::holds_alternative<int64_t TrainConfig::*>(m)) return "an integer";
  if (std::holds_alternative<double TrainConfig::*>(m)) return "a number";
  return "a boolean (true or false)";
}

bool one_of(const std::string& v, std::initializer_list<const char*> accepted) {
  for (const char* a : accepted)
    if (v == a) return true;
  return false;
}

std::string fmt(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// What is wrong with key `name`'s value in c, or "" when it is fine.
std::string key_problem(const TrainConfig& c, std::string_view name) {
  auto at_least = [](int64_t v, int64_t lo) {
    return v >= lo ? std::string() : "must be >= " + std::to_string(lo) + ", got " + std::to_string(v);
  };
  auto in_range = [](double v, double lo, double hi, bool hi_open) {
    const bool ok = std::isfinite(v) && v >= lo && (hi_open ? v < hi : v <= hi);
    return ok ? std::string()
              : "must lie in [" + fmt(lo) + ", " + fmt(hi) + (hi_open ? ")" : "]") + ", got " + fmt(v);
  };
  auto non_negative = [](double v) {
    return std::isfinite(v) && v >= 0.0 ? std::string() : "must be a finite number >= 0, got " + fmt(v);
  };
  auto recipe = [](const std::string& v) {
    try {
      parse_recipe(v);
      return std::string();
    } catch (const Error& e) {
      std::string msg = e.what();
      return msg.substr(0, msg.rfind(" ["));  // without the call site of parse_recipe
    }
  };
  if (name == "recipe") return recipe(c.recipe);
  if (name == "lm_head_recipe") return recipe(c.lm_head_recipe);
  if (name == "val_fraction") return in_range(c.val_fraction, 0.0, 1.0, true);
  if (name == "template")
    return one_of(c.chat_template, {"auto", "none", "llama3", "chatml", "llama2", "mistral"})
               ? ""
               : "must be auto, none, llama3, chatml, llama2 or mistral, got '" + c.chat_template + "'";
  if (name == "loss_on")
    return one_of(c.loss_on, {"assistant", "all"}) ? "" : "must be assistant or all, got '" + c.loss_on + "'";
  if (name == "packing")
    return one_of(c.packing, {"pack", "pad"}) ? "" : "must be pack or pad, got '" + c.packing + "'";
  if (name == "steps") return at_least(c.steps, 0);
  if (name == "epochs") return non_negative(c.epochs);
  if (name == "batch") return at_least(c.batch, 1);
  if (name == "seq_len") return at_least(c.seq_len, 1);
  if (name == "grad_accum") return at_least(c.grad_accum, 1);
  if (name == "lr")
    return std::isfinite(c.lr) && c.lr > 0.0 ? "" : "must be a finite number > 0, got " + fmt(c.lr);
  if (name == "min_lr_ratio") return in_range(c.min_lr_ratio, 0.0, 1.0, false);
  if (name == "schedule")
    return one_of(c.schedule, {"constant", "linear", "cosine"})
               ? ""
               : "must be constant, linear or cosine, got '" + c.schedule + "'";
  if (name == "warmup_steps") return at_least(c.warmup_steps, 0);
  if (name == "weight_decay") return non_negative(c.weight_decay);
  if (name == "beta1") return in_range(c.beta1, 0.0, 1.0, true);
  if (name == "beta2") return in_range(c.beta2, 0.0, 1.0, true);
  if (name == "eps") return non_negative(c.eps);
  if (name == "grad_clip") return non_negative(c.grad_clip);
  if (name == "master_weights")
    return one_of(c.master_weights, {"fp32", "bf16"}) ? "" : "must be fp32 or bf16, got '" + c.master_weights + "'";
  if (name == "grad_dtype")
    return one_of(c.grad_dtype, {"f32", "bf16"}) ? "" : "must be f32 or bf16, got '" + c.grad_dtype + "'";
  if (name == "eval_interval") return at_least(c.eval_interval, 0);
  if (name == "eval_batches") return at_least(c.eval_batches, 0);
  if (name == "eval_metric")
    return one_of(c.eval_metric, {"exact", "sql", "gsm8k", "viggo"})
               ? ""
               : "must be exact, sql, gsm8k or viggo, got '" + c.eval_metric + "'";
  if (name == "eval_max_new_tokens") return at_least(c.eval_max_new_tokens, 1);
  if (name == "save_interval") return at_least(c.save_interval, 0);
  if (name == "keep_checkpoints") return at_least(c.keep_checkpoints, 0);
  if (name == "out") return c.out.empty() ? "must not be empty" : "";
  if (name == "seed") return at_least(c.seed, 0);
  if (name == "device")
    return one_of(c.device, {"auto", "cpu", "cuda"}) ? "" : "must be auto, cpu or cuda, got '" + c.device + "'";
  if (name == "log_interval") return at_least(c.log_interval, 1);
  if (name == "save_dtype")
    return one_of(c.save_dtype, {"bf16", "f32"}) ? "" : "must be bf16 or f32, got '" + c.save_dtype + "'";
  return "";
}

// ---- command-line spellings ---------------------------------------------------------

bool parse_int(const std::string& s, int64_t& out) {
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data() + (!s.empty() && s[0] == '+'), end, out);
  return ec == std::errc() && p == end && !s.empty();
}

bool parse_double(const std::string& s, double& out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

bool parse_bool(const std::string& s, bool& out) {
  if (s == "true" || s == "1") return out = true, true;
  if (s == "false" || s == "0") return out = false, true;
  return false;
}

// ---- TOML output ----------------------------------------------------------------------

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// Shortest spelling that reads back to the same double, always a TOML float.
std::string toml_double(double x) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  std::string s(buf, end);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

}  // namespace

std::vector<std::string> train_config_keys() {
  std::vector<std::string> out;
  for (const Key& k : keys()) out.emplace_back(k.name);
  return out;
}

TrainConfig parse_train_config(std::string_view toml_text, const std::string& source, const TrainConfig& base) {
  toml::table table;
  try {
    table = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    HALO_FAIL(source, ":", e.source().begin.line, ":", e.source().begin.column, ": TOML syntax error: ",
              e.description());
  }
  TrainConfig c = base;
  for (const auto& [name, node] : table) {
    const std::string key(name.str());
    const std::string where = source + ":" + std::to_string(node.source().begin.line) + ": key '" + key + "'";
    const Key* k = find_key(key);
    HALO_CHECK(k, where, ": unknown key (known: ", known_keys(), ")");
    bool ok = false;
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(c.*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            if (const auto* v = node.as_string()) ok = true, c.*member = v->get();
          } else if constexpr (std::is_same_v<T, int64_t>) {
            if (const auto* v = node.as_integer()) ok = true, c.*member = v->get();
          } else if constexpr (std::is_same_v<T, double>) {
            if (const auto* v = node.as_floating_point()) ok = true, c.*member = v->get();
            if (const auto* v = node.as_integer()) ok = true, c.*member = static_cast<double>(v->get());
          } else {
            if (const auto* v = node.as_boolean()) ok = true, c.*member = v->get();
          }
        },
        k->member);
    HALO_CHECK(ok, where, ": must be ", type_name(k->member), ", got a TOML ", node.type());
    const std::string problem = key_problem(c, key);
    HALO_CHECK(problem.empty(), where, ": ", problem);
  }
  return c;
}

TrainConfig load_train_config(const std::string& path, const TrainConfig& base) {
  return parse_train_config(read_file(path), path, base);
}

void set_train_config_key(TrainConfig& c, const std::string& key, const std::string& value) {
  const Key* k = find_key(key);
  HALO_CHECK(k, "unknown option --", key, " (config keys: ", known_keys(), "; and --config FILE)");
  bool ok = true;
  std::visit(
      [&](auto member) {
        using T = std::remove_cvref_t<decltype(c.*member)>;
        if constexpr (std::is_same_v<T, std::string>) {
          c.*member = value;
        } else if constexpr (std::is_same_v<T, int64_t>) {
          ok = parse_int(value, c.*member);
        } else if constexpr (std::is_same_v<T, double>) {
          ok = parse_double(value, c.*member);
        } else {
          ok = parse_bool(value, c.*member);
        }
      },
      k->member);
  HALO_CHECK(ok, "option --", key, ": must be ", type_name(k->member), ", got '", value, "'");
  const std::string problem = key_problem(c, key);
  HALO_CHECK(problem.empty(), "option --", key, ": ", problem);
}

void apply_train_args(TrainConfig& c, const std::vector<std::string>& args) {
  // (name, value) pairs in order; a bare boolean option gets "true".
  std::vector<std::pair<std::string, std::string>> options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    HALO_CHECK(a.rfind("--", 0) == 0 && a.size() > 2, "unexpected argument '", a, "' (options are --key value)");
    std::string name = a.substr(2);
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      options.emplace_back(name.substr(0, eq), name.substr(eq + 1));
      continue;
    }
    const Key* k = find_key(name);
    const bool is_bool = k && std::holds_alternative<bool TrainConfig::*>(k->member);
    if (is_bool && (i + 1 == args.size() || args[i + 1].rfind("--", 0) == 0)) {
      options.emplace_back(name, "true");
      continue;
    }
    HALO_CHECK(i + 1 < args.size(), "option --", name, " needs a value");
    options.emplace_back(name, args[++i]);
  }
  int configs = 0;
  for (const auto& [name, value] : options) {
    if (name != "config") continue;
    HALO_CHECK(++configs == 1, "--config given more than once");
    c = load_train_config(value, c);
  }
  for (const auto& [name, value] : options)
    if (name != "config") set_train_config_key(c, name, value);
}

void check_train_config(const TrainConfig& c) {
  for (const Key& k : keys()) {
    const std::string problem = key_problem(c, k.name);
    HALO_CHECK(problem.empty(), "config key '", k.name, "': ", problem);
  }
  HALO_CHECK(c.model.empty() != c.init.empty(),
             c.model.empty() ? "config: set 'model' (a model directory) or 'init' (a config.json to initialize "
                               "randomly)"
                             : "config: set only one of 'model' and 'init'");
  HALO_CHECK(!c.data.empty(), "config: set 'data' (a token file or a JSONL file)");
  const auto jsonl = [](const std::string& p) { return p.size() >= 6 && p.compare(p.size() - 6, 6, ".jsonl") == 0; };
  HALO_CHECK(!(jsonl(c.data) || jsonl(c.val_data)) || !c.tokenizer.empty() || !c.model.empty(),
             "config: JSONL data needs a tokenizer: set 'tokenizer' (a model directory or tokenizer.json; a run "
             "from 'init' has no model directory to take it from)");
  HALO_CHECK((c.steps > 0) != (c.epochs > 0.0),
             c.steps > 0 ? "config: set only one of 'steps' and 'epochs'"
                         : "config: set 'steps' or 'epochs' (how long to train)");
}

TrainConfig train_config_from_args(const std::vector<std::string>& args) {
  TrainConfig c;
  apply_train_args(c, args);
  check_train_config(c);
  return c;
}

std::string to_toml(const TrainConfig& c) {
  std::string out = "# halo train: the resolved run configuration\n";
  for (const Key& k : keys()) {
    std::string value;
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(c.*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            if (!(c.*member).empty()) value = toml_string(c.*member);
          } else if constexpr (std::is_same_v<T, int64_t>) {
            value = std::to_string(c.*member);
          } else if constexpr (std::is_same_v<T, double>) {
            value = toml_double(c.*member);
          } else {
            value = c.*member ? "true" : "false";
          }
        },
        k.member);
    if (!value.empty()) out += std::string(k.name) + " = " + value + "\n";
  }
  return out;
}

}  // namespace halo
