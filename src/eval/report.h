// The HTML report of `halo report`: one self-contained page (inline SVG and
// CSS, no scripts) with
//   - the training loss of each run against the step (metrics.jsonl: the
//     per-step "loss" as a thin line, its moving average over ~5% of the run
//     as a thick one, each evaluation's "val_loss" as dots),
//   - a table of the runs (steps, last loss, last val_loss, tokens/s, time),
//   - the accuracy of each evaluation (results.jsonl of `halo eval --output`),
//   - a few examples with every evaluation's prediction side by side
//     (examples where the evaluations disagree first).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "eval/evaluate.h"

namespace halo {

struct RunMetrics {
  std::string name, dir;
  std::vector<std::pair<int64_t, double>> loss;      // (step, loss)
  std::vector<std::pair<int64_t, double>> val_loss;  // (step, val_loss)
  double tokens_per_s = 0.0;  // mean of the steps' tokens_per_s (0: none logged)
  double train_seconds = 0.0; // sum of the steps' step_ms
};
// DIR/metrics.jsonl (trainer.h's format); errors name FILE:LINE.
RunMetrics read_run_metrics(const std::string& name, const std::string& dir);

struct EvalResults {
  std::string name, path;
  std::vector<GenerationRecord> records;  // new_tokens not stored: 0
  int64_t correct = 0;
  double accuracy() const { return records.empty() ? 0.0 : double(correct) / double(records.size()); }
};
// A results.jsonl of `halo eval --output`; errors name FILE:LINE.
EvalResults read_eval_results(const std::string& name, const std::string& path);

struct ReportOptions {
  std::string title = "halo fine-tuning report";
  int64_t examples = 8;  // example rows shown
  std::string notes;     // a paragraph under the title (plain text; escaped)
};

std::string render_report_html(const std::vector<RunMetrics>& runs, const std::vector<EvalResults>& evals,
                               const ReportOptions& options);

// "a < b & c" -> "a &lt; b &amp; c" (also " and ').
std::string html_escape(const std::string& text);

}  // namespace halo
