#include "eval/metrics.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace halo {

namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_word_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || c == '.'; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// White space trimmed at both ends and runs of it inside made one space.
std::string collapse_space(std::string_view text) {
  std::string out;
  bool pending = false;
  for (char c : text) {
    if (is_space(c)) {
      pending = !out.empty();
      continue;
    }
    if (pending) out += ' ';
    pending = false;
    out += c;
  }
  return out;
}

std::vector<std::string> sql_tokens(std::string_view s) {
  std::vector<std::string> tokens;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (is_space(c)) {
      ++i;
    } else if (c == '\'' || c == '"' || c == '`') {
      // A quoted literal or identifier, kept exactly; '' inside '...' is an escaped quote.
      size_t j = i + 1;
      while (j < s.size()) {
        if (s[j] == c) {
          if (c == '\'' && j + 1 < s.size() && s[j + 1] == '\'') {
            j += 2;
            continue;
          }
          break;
        }
        ++j;
      }
      j = std::min(j + 1, s.size());  // an unclosed quote runs to the end
      tokens.emplace_back(s.substr(i, j - i));
      i = j;
    } else if (is_word_start(c)) {
      size_t j = i;
      while (j < s.size() && is_word_char(s[j])) ++j;
      tokens.push_back(lower(s.substr(i, j - i)));
      i = j;
    } else if (is_digit(c) || (c == '.' && i + 1 < s.size() && is_digit(s[i + 1]))) {
      size_t j = i;
      while (j < s.size() && (is_digit(s[j]) || s[j] == '.')) ++j;
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && is_digit(s[k])) {
          j = k;
          while (j < s.size() && is_digit(s[j])) ++j;
        }
      }
      tokens.push_back(lower(s.substr(i, j - i)));
      i = j;
    } else {
      const std::string_view two = s.substr(i, 2);
      if (two == "<=" || two == ">=" || two == "<>" || two == "||") {
        tokens.emplace_back(two);
        i += 2;
      } else if (two == "!=") {
        tokens.emplace_back("<>");
        i += 2;
      } else if (two == "==") {
        tokens.emplace_back("=");
        i += 2;
      } else {
        tokens.emplace_back(1, c);
        ++i;
      }
    }
  }
  while (!tokens.empty() && tokens.back() == ";") tokens.pop_back();
  return tokens;
}

// Scans one number starting at text[i] (a digit, or '.' before a digit):
// thousands groups ",ddd" and a fraction. Returns its value; `end` is set
// past it.
double scan_number(std::string_view text, size_t i, size_t& end) {
  std::string digits;
  size_t j = i;
  while (j < text.size() && is_digit(text[j])) digits += text[j++];
  // ",ddd" groups: exactly three digits, not followed by a fourth.
  while (j + 3 < text.size() && text[j] == ',' && is_digit(text[j + 1]) && is_digit(text[j + 2]) &&
         is_digit(text[j + 3]) && (j + 4 >= text.size() || !is_digit(text[j + 4]))) {
    digits.append(text.substr(j + 1, 3));
    j += 4;
  }
  if (j + 1 < text.size() && text[j] == '.' && is_digit(text[j + 1])) {
    digits += '.';
    ++j;
    while (j < text.size() && is_digit(text[j])) digits += text[j++];
  }
  end = j;
  return std::strtod(digits.c_str(), nullptr);
}

bool same_number(double a, double b) { return std::fabs(a - b) <= 1e-9 * std::max(1.0, std::fabs(b)); }

bool is_identifier(std::string_view s) {
  if (s.empty() || !is_word_start(s[0])) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

}  // namespace

Metric parse_metric(std::string_view name) {
  if (name == "exact") return Metric::exact;
  if (name == "sql") return Metric::sql;
  if (name == "gsm8k") return Metric::gsm8k;
  if (name == "viggo") return Metric::viggo;
  HALO_FAIL("unknown metric '", name, "' (expected exact, sql, gsm8k or viggo)");
}

std::string_view metric_name(Metric m) {
  switch (m) {
    case Metric::exact: return "exact";
    case Metric::sql: return "sql";
    case Metric::gsm8k: return "gsm8k";
    case Metric::viggo: return "viggo";
  }
  return "?";
}

bool score_prediction(Metric m, std::string_view prediction, std::string_view reference) {
  switch (m) {
    case Metric::exact: return exact_match(prediction, reference);
    case Metric::sql: return sql_match(prediction, reference);
    case Metric::gsm8k: return gsm8k_match(prediction, reference);
    case Metric::viggo: return viggo_match(prediction, reference);
  }
  return false;
}

std::string trim_space(std::string_view text) {
  size_t b = 0, e = text.size();
  while (b < e && is_space(text[b])) ++b;
  while (e > b && is_space(text[e - 1])) --e;
  return std::string(text.substr(b, e - b));
}

bool exact_match(std::string_view prediction, std::string_view reference) {
  return trim_space(prediction) == trim_space(reference);
}

std::string normalize_sql(std::string_view sql) {
  std::string out;
  for (const std::string& t : sql_tokens(sql)) {
    if (!out.empty()) out += ' ';
    out += t;
  }
  return out;
}

std::string strip_code_fence(std::string_view text) {
  const size_t open = text.find("```");
  if (open == std::string_view::npos) return std::string(text);
  size_t start = text.find('\n', open + 3);
  if (start == std::string_view::npos) return "";  // a fence and a tag, nothing after
  ++start;
  const size_t close = text.find("```", start);
  return std::string(text.substr(start, close == std::string_view::npos ? std::string_view::npos : close - start));
}

bool sql_match(std::string_view prediction, std::string_view reference) {
  const std::vector<std::string> p = sql_tokens(strip_code_fence(prediction)), r = sql_tokens(reference);
  return !r.empty() && p == r;
}

std::optional<double> last_number(std::string_view text) {
  std::optional<double> last;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    const bool starts = is_digit(c) || (c == '.' && i + 1 < text.size() && is_digit(text[i + 1]));
    if (!starts) {
      ++i;
      continue;
    }
    // '-' right before, itself not after a letter or digit ("5-3" is 5 and 3), makes it negative.
    const bool negative = i > 0 && text[i - 1] == '-' &&
                          (i == 1 || !std::isalnum(static_cast<unsigned char>(text[i - 2])));
    size_t end = i;
    const double v = scan_number(text, i, end);
    last = negative ? -v : v;
    i = end;
  }
  return last;
}

std::optional<double> gsm8k_answer(std::string_view reference) {
  const size_t mark = reference.rfind("####");
  if (mark == std::string_view::npos) return std::nullopt;
  std::string_view rest = reference.substr(mark + 4);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (is_digit(rest[i]) || (rest[i] == '.' && i + 1 < rest.size() && is_digit(rest[i + 1]))) {
      size_t end = i;
      const double v = scan_number(rest, i, end);
      return i > 0 && rest[i - 1] == '-' ? -v : v;
    }
  }
  return std::nullopt;
}

bool gsm8k_match(std::string_view prediction, std::string_view reference) {
  const std::optional<double> want = gsm8k_answer(reference);
  HALO_CHECK(want.has_value(), "gsm8k metric: the reference has no number after '####': '", reference, "'");
  const std::optional<double> got = last_number(prediction);
  return got.has_value() && same_number(*got, *want);
}

std::optional<MeaningRepresentation> parse_meaning_representation(std::string_view text) {
  const std::string s = trim_space(text);
  const size_t open = s.find('(');
  if (open == std::string::npos || s.back() != ')') return std::nullopt;
  MeaningRepresentation mr;
  mr.function = trim_space(std::string_view(s).substr(0, open));
  if (!is_identifier(mr.function)) return std::nullopt;
  const std::string_view inner = std::string_view(s).substr(open + 1, s.size() - open - 2);
  size_t i = 0;
  while (true) {
    while (i < inner.size() && is_space(inner[i])) ++i;
    if (i == inner.size()) break;
    const size_t bracket = inner.find('[', i);
    if (bracket == std::string_view::npos) return std::nullopt;
    const std::string attr = trim_space(inner.substr(i, bracket - i));
    if (!is_identifier(attr)) return std::nullopt;
    const size_t close = inner.find(']', bracket + 1);
    if (close == std::string_view::npos) return std::nullopt;
    const std::string_view value = inner.substr(bracket + 1, close - bracket - 1);
    if (value.find('[') != std::string_view::npos) return std::nullopt;
    mr.attributes.emplace(attr, collapse_space(value));
    i = close + 1;
    while (i < inner.size() && is_space(inner[i])) ++i;
    if (i == inner.size()) break;
    if (inner[i] != ',') return std::nullopt;
    ++i;
  }
  return mr;
}

bool viggo_match(std::string_view prediction, std::string_view reference) {
  const std::optional<MeaningRepresentation> r = parse_meaning_representation(reference);
  HALO_CHECK(r.has_value(), "viggo metric: the reference is not a meaning representation "
             "'function(attr[value], ...)': '", reference, "'");
  const std::optional<MeaningRepresentation> p = parse_meaning_representation(prediction);
  return p.has_value() && *p == *r;
}

}  // namespace halo
