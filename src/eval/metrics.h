// How a model's generated answer is scored against the reference answer of an
// evaluation record (`halo eval --metric ...`). Every metric returns whether
// the prediction counts as correct; accuracy is the fraction correct.
//
//   exact   the two texts equal after trimming white space at both ends.
//   sql     the SQL statements equal after normalization (normalize_sql):
//           if the prediction holds a Markdown code fence (```sql ... ```),
//           only the first fenced block is compared; then both are split into
//           tokens (words, numbers, 'string literals', "quoted identifiers",
//           operators, punctuation) and compared token by token, so white
//           space (also around commas and parentheses) does not matter, words
//           outside quotes are compared ignoring case (SQL keywords and
//           unquoted identifiers are case-insensitive), quoted text is
//           compared exactly, "!=" equals "<>", and trailing semicolons are
//           dropped. "select count( * ) from T where x>5" matches
//           "SELECT COUNT(*) FROM t WHERE x > 5;"; 'Sales' does not match 'sales'.
//   gsm8k   GSM8K style: the number after the reference's last "####" equals
//           the last number in the prediction, compared as numbers
//           ("1,234" = 1234, "18.00" = 18, "$5." = 5, "-3" = -3).
//   viggo   ViGGO meaning representations "function(attr[value], attr[value], ...)":
//           the same function name and the same set of attr[value] pairs, in
//           any order (values trimmed, inner white space collapsed, compared
//           exactly otherwise). A prediction that does not parse (no
//           parentheses, an unclosed bracket, text after the closing
//           parenthesis) is wrong.
#pragma once
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace halo {

enum class Metric { exact, sql, gsm8k, viggo };

// "exact", "sql", "gsm8k", "viggo"; throws naming the accepted names.
Metric parse_metric(std::string_view name);
std::string_view metric_name(Metric m);

// Whether `prediction` counts as a correct answer for `reference` under `m`.
bool score_prediction(Metric m, std::string_view prediction, std::string_view reference);

std::string trim_space(std::string_view text);
bool exact_match(std::string_view prediction, std::string_view reference);

// The statement's tokens as compared (see above), e.g. "select count ( * ) from t".
std::string normalize_sql(std::string_view sql);
// The first ```-fenced block's content (a language tag after the fence
// dropped), or the text itself when it has no fence.
std::string strip_code_fence(std::string_view text);
bool sql_match(std::string_view prediction, std::string_view reference);

// The last number in the text ("1,234.5" -> 1234.5); none if it has none.
std::optional<double> last_number(std::string_view text);
// The first number after the last "####"; none if no "####" or no number after it.
std::optional<double> gsm8k_answer(std::string_view reference);
bool gsm8k_match(std::string_view prediction, std::string_view reference);

struct MeaningRepresentation {
  std::string function;
  std::set<std::pair<std::string, std::string>> attributes;  // (attr, value)
  bool operator==(const MeaningRepresentation&) const = default;
};
// "inform(name[X], rating[good])"; none when the text does not parse.
std::optional<MeaningRepresentation> parse_meaning_representation(std::string_view text);
bool viggo_match(std::string_view prediction, std::string_view reference);

}  // namespace halo
