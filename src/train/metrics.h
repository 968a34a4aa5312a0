// What a run reports: a JSON-lines metrics file (one object per line, e.g.
// {"step": 100, "loss": 2.31, "lr": 0.0003, ...}), a formatted log line per
// step, and a progress bar with ETA drawn only when stdout is a terminal.
#pragma once
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace halo {

// Appends one JSON object per line to a file, flushed after each line so a
// crash loses nothing written. Opening a fresh run truncates the file; opening
// a resumed run (resume_step given) keeps the lines whose "step" is at most
// resume_step (or that have none) and drops the rest (steps the resumed run
// will log again, and a torn last line), then appends.
class MetricsWriter {
 public:
  MetricsWriter(const std::string& path, std::optional<int64_t> resume_step);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const nlohmann::json& object);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// One optimizer step's figures for the log line; negative means unknown (left
// out); NaN and infinities are printed as such.
struct StepStats {
  int64_t step = 0;         // 1-based: the step just finished
  int64_t total_steps = 0;
  double loss = -1.0;
  double grad_norm = -1.0;
  double lr = -1.0;
  double tokens_per_s = -1.0;
  double mfu = -1.0;        // model FLOPs utilization, a fraction
  double eta_s = -1.0;      // seconds left
  bool skipped = false;     // non-finite gradients: the update was skipped
};

// "step   100/1000 | loss 2.3456 | norm 0.812 | lr 3.00e-04 | 12.3k tok/s | MFU 41.2% | ETA 1h02m",
// unknown fields left out, " | skipped (non-finite gradients)" appended when skipped.
std::string format_step_line(const StepStats& s);
std::string format_duration(double seconds);  // "45s", "3m05s", "1h02m", "2d03h"
std::string format_count(double x);           // "950", "12.3k", "4.56M", "7.89G"

// "[#########...........]  45% 450/1000 ETA 3m05s" with a bar `width` characters wide.
std::string render_progress(int64_t done, int64_t total, int width, double eta_s);

// The terminal's progress bar. On a terminal, draw() redraws one status line
// in place and print() writes a permanent line above it; elsewhere (a pipe, a
// log file) draw() does nothing and print() writes plain lines.
class ProgressBar {
 public:
  explicit ProgressBar(int64_t total, std::FILE* out = stdout);  // a terminal if isatty(out)
  ProgressBar(int64_t total, std::FILE* out, bool terminal);
  void draw(int64_t done, double eta_s);
  void print(const std::string& line);
  void finish();  // ends the bar's line (terminal only)
  bool terminal() const { return terminal_; }

 private:
  int64_t total_;
  std::FILE* out_;
  bool terminal_;
  bool drawn_ = false;  // the bar is on the current line
  std::string bar_;     // what draw() last drew
};

}  // namespace halo
