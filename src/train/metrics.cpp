#include "train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <system_error>

#include "core/error.h"
#include "io/atomic_file.h"

namespace halo {

namespace {

std::string printf_string(const char* format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, x);
  return buf;
}

}  // namespace

// ---- metrics file ----------------------------------------------------------------------

MetricsWriter::MetricsWriter(const std::string& path, std::optional<int64_t> resume_step) : path_(path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  if (!dir.empty()) make_directories(dir);
  std::error_code ec;
  if (resume_step && std::filesystem::exists(path, ec)) {
    std::istringstream in(read_file(path));
    std::string kept, line;
    while (std::getline(in, line)) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object()) continue;  // a torn last line
      if (j.contains("step") && j["step"].is_number() && j["step"].get<double>() > static_cast<double>(*resume_step))
        continue;
      kept += line + "\n";
    }
    write_file_atomic(path, kept);
  }
  file_ = std::fopen(path.c_str(), resume_step ? "a" : "w");
  HALO_CHECK(file_, path, ": cannot open metrics file: ", std::system_category().message(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const nlohmann::json& object) {
  const std::string line = object.dump() + "\n";
  const bool ok = std::fputs(line.c_str(), file_) >= 0 && std::fflush(file_) == 0;
  HALO_CHECK(ok, path_, ": cannot write metrics: ", std::system_category().message(errno));
}

// ---- log lines -------------------------------------------------------------------------

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(std::llround(s));
  char buf[32];
  if (t < 60) std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(t));
  else if (t < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  else if (t < 86400) std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(t / 3600), static_cast<long long>(t % 3600 / 60));
  else std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(t / 86400), static_cast<long long>(t % 86400 / 3600));
  return buf;
}

std::string format_count(double x) {
  if (!std::isfinite(x)) return printf_string("%g", x);
  if (std::fabs(x) < 1e3) return printf_string("%.0f", x);
  if (std::fabs(x) < 1e6) return printf_string("%.1fk", x / 1e3);
  if (std::fabs(x) < 1e9) return printf_string("%.2fM", x / 1e6);
  return printf_string("%.2fG", x / 1e9);
}

std::string format_step_line(const StepStats& s) {
  const int width = static_cast<int>(std::to_string(std::max<int64_t>(s.total_steps, 0)).size());
  char buf[64];
  std::snprintf(buf, sizeof buf, "step %*lld/%lld", width, static_cast<long long>(s.step),
                static_cast<long long>(s.total_steps));
  std::string line = buf;
  auto known = [](double x) { return !(x < 0); };  // NaN and inf are shown
  if (known(s.loss)) line += " | loss " + printf_string("%.4f", s.loss);
  if (known(s.grad_norm)) line += " | norm " + printf_string("%.3f", s.grad_norm);
  if (known(s.lr)) line += " | lr " + printf_string("%.2e", s.lr);
  if (known(s.tokens_per_s)) line += " | " + format_count(s.tokens_per_s) + " tok/s";
  if (known(s.mfu)) line += " | MFU " + printf_string("%.1f%%", 100.0 * s.mfu);
  if (known(s.eta_s)) line += " | ETA " + format_duration(s.eta_s);
  if (s.skipped) line += " | skipped (non-finite gradients)";
  return line;
}

// ---- progress bar -----------------------------------------------------------------------

std::string render_progress(int64_t done, int64_t total, int width, double eta_s) {
  const double frac = total > 0 ? std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0) : 0.0;
  const int filled = static_cast<int>(std::floor(frac * width));  // full only when done
  std::string s = "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%3d%% %lld/%lld", static_cast<int>(std::floor(frac * 100.0)),
                static_cast<long long>(done), static_cast<long long>(total));
  s += buf;
  if (eta_s >= 0) s += " ETA " + format_duration(eta_s);
  return s;
}

ProgressBar::ProgressBar(int64_t total, std::FILE* out) : ProgressBar(total, out, ::isatty(::fileno(out)) == 1) {}

ProgressBar::ProgressBar(int64_t total, std::FILE* out, bool terminal) : total_(total), out_(out), terminal_(terminal) {}

void ProgressBar::draw(int64_t done, double eta_s) {
  if (!terminal_) return;
  bar_ = render_progress(done, total_, 30, eta_s);
  std::fprintf(out_, "\r\033[K%s", bar_.c_str());
  std::fflush(out_);
  drawn_ = true;
}

void ProgressBar::print(const std::string& line) {
  if (drawn_) std::fputs("\r\033[K", out_);
  std::fprintf(out_, "%s\n", line.c_str());
  if (drawn_) std::fputs(bar_.c_str(), out_);
  std::fflush(out_);
}

void ProgressBar::finish() {
  if (drawn_) std::fputs("\n", out_);
  std::fflush(out_);
  drawn_ = false;
}

}  // namespace halo
