// halo report: an HTML page of training runs and evaluations (eval/report.h),
// and their accuracies printed side by side.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "eval/report.h"
#include "io/atomic_file.h"

namespace halo::cli {

namespace {

const char* kReportUsage =
    "usage: halo report [--run NAME=RUN_DIR ...] [--eval NAME=results.jsonl ...] --out report.html\n"
    "                   [--title TEXT] [--notes TEXT] [--examples N]\n"
    "  RUN_DIR: a `halo train` run directory (its metrics.jsonl); results.jsonl: `halo eval --output`.\n"
    "  Options may repeat; runs and evaluations appear in the order given.\n";

std::pair<std::string, std::string> name_and_path(const std::string& option, const std::string& value) {
  const size_t eq = value.find('=');
  HALO_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < value.size(), "report: --", option,
             " expects NAME=PATH, got '", value, "'");
  return {value.substr(0, eq), value.substr(eq + 1)};
}

}  // namespace

int report(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::fputs(kReportUsage, argv.empty() ? stderr : stdout);
    return argv.empty() ? 2 : 0;
  }
  std::vector<RunMetrics> runs;
  std::vector<EvalResults> evals;
  std::string out;
  ReportOptions options;
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string name = argv[i], value;
    HALO_CHECK(name.rfind("--", 0) == 0, "report: unexpected argument '", name, "'\n", kReportUsage);
    name = name.substr(2);
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      HALO_CHECK(i + 1 < argv.size(), "report: option --", name, " needs a value");
      value = argv[++i];
    }
    if (name == "run") {
      const auto [n, p] = name_and_path(name, value);
      runs.push_back(read_run_metrics(n, p));
    } else if (name == "eval") {
      const auto [n, p] = name_and_path(name, value);
      evals.push_back(read_eval_results(n, p));
    } else if (name == "out") {
      out = value;
    } else if (name == "title") {
      options.title = value;
    } else if (name == "notes") {
      options.notes = value;
    } else if (name == "examples") {
      char* end = nullptr;
      options.examples = std::strtoll(value.c_str(), &end, 10);
      HALO_CHECK(!value.empty() && *end == 0 && options.examples >= 0, "report: --examples expects a count, got '",
                 value, "'");
    } else {
      HALO_FAIL("report: unknown option --", name, " (known: --run, --eval, --out, --title, --notes, --examples)");
    }
  }
  HALO_CHECK(!out.empty(), "report: --out report.html is required");
  HALO_CHECK(!runs.empty() || !evals.empty(), "report: give at least one --run or --eval");
  if (const auto parent = std::filesystem::path(out).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent);
  write_file_atomic(out, render_report_html(runs, evals, options));

  size_t width = 5;
  for (const EvalResults& e : evals) width = std::max(width, e.name.size());
  for (const EvalResults& e : evals)
    std::printf("  %-*s  %5.1f%%  (%lld/%zu)\n", static_cast<int>(width), e.name.c_str(), 100.0 * e.accuracy(),
                static_cast<long long>(e.correct), e.records.size());
  for (const RunMetrics& r : runs)
    if (!r.loss.empty())
      std::printf("  run %s: %lld steps, loss %.4f -> %.4f%s\n", r.name.c_str(),
                  static_cast<long long>(r.loss.back().first), r.loss.front().second, r.loss.back().second,
                  r.val_loss.empty() ? "" : (", val_loss " + std::to_string(r.val_loss.back().second)).c_str());
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace halo::cli
