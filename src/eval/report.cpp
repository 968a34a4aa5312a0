#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace halo {

namespace {

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};
const char* color(size_t i) { return kColors[i % (sizeof kColors / sizeof kColors[0])]; }

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Reads a JSONL file line by line: f(json, "FILE:LINE") for each non-blank line.
template <class F>
void for_each_json_line(const std::string& path, F f) {
  std::ifstream in(path);
  HALO_CHECK(in, "cannot open ", path);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      HALO_FAIL(where, ": not JSON: ", e.what());
    }
    HALO_CHECK(j.is_object(), where, ": expected a JSON object");
    f(j, where);
  }
}

// About `n` round tick values covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int n) {
  const double range = hi > lo ? hi - lo : 1.0;
  const double raw = range / n, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9 * range; t += step) ticks.push_back(t);
  return ticks;
}

// Centered moving average over `window` points.
std::vector<double> moving_average(const std::vector<std::pair<int64_t, double>>& v, size_t window) {
  std::vector<double> out(v.size());
  const size_t half = window / 2;
  for (size_t i = 0; i < v.size(); ++i) {
    const size_t a = i >= half ? i - half : 0, b = std::min(v.size(), i + half + 1);
    double s = 0;
    for (size_t k = a; k < b; ++k) s += v[k].second;
    out[i] = s / static_cast<double>(b - a);
  }
  return out;
}

std::string loss_chart(const std::vector<RunMetrics>& runs) {
  double x_max = 1, y_lo = INFINITY, y_hi = -INFINITY;
  for (const RunMetrics& r : runs)
    for (const auto* series : {&r.loss, &r.val_loss})
      for (const auto& [step, v] : *series) {
        if (!std::isfinite(v)) continue;
        x_max = std::max(x_max, static_cast<double>(step));
        y_lo = std::min(y_lo, v);
        y_hi = std::max(y_hi, v);
      }
  if (!std::isfinite(y_lo)) return "<p>No losses logged.</p>\n";
  if (y_hi - y_lo < 1e-9) y_hi = y_lo + 1;
  y_lo = std::max(0.0, y_lo - 0.05 * (y_hi - y_lo));
  const double W = 760, H = 340, L = 60, R = 20, T = 15, B = 45;
  const auto X = [&](double s) { return L + (W - L - R) * s / x_max; };
  const auto Y = [&](double v) { return T + (H - T - B) * (1.0 - (v - y_lo) / (y_hi - y_lo)); };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" class=\"chart\">\n";
  for (double t : nice_ticks(y_lo, y_hi, 6)) {
    os << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << fmt("%.1f", Y(t)) << "\" y2=\""
       << fmt("%.1f", Y(t)) << "\" class=\"grid\"/><text x=\"" << L - 6 << "\" y=\"" << fmt("%.1f", Y(t) + 4)
       << "\" text-anchor=\"end\">" << fmt("%g", t) << "</text>\n";
  }
  for (double t : nice_ticks(0, x_max, 8)) {
    os << "<line x1=\"" << fmt("%.1f", X(t)) << "\" x2=\"" << fmt("%.1f", X(t)) << "\" y1=\"" << T << "\" y2=\""
       << H - B << "\" class=\"grid\"/><text x=\"" << fmt("%.1f", X(t)) << "\" y=\"" << H - B + 16
       << "\" text-anchor=\"middle\">" << fmt("%g", t) << "</text>\n";
  }
  os << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
     << "\" class=\"frame\"/>\n"
     << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 8 << "\" text-anchor=\"middle\">step</text>\n"
     << "<text transform=\"translate(14," << (T + H - B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">loss</text>\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = runs[i];
    if (!r.loss.empty()) {
      std::ostringstream raw, avg;
      const std::vector<double> smooth = moving_average(r.loss, std::max<size_t>(1, r.loss.size() / 20));
      for (size_t k = 0; k < r.loss.size(); ++k) {
        if (!std::isfinite(r.loss[k].second)) continue;
        const double x = X(static_cast<double>(r.loss[k].first));
        raw << fmt("%.1f", x) << "," << fmt("%.1f", Y(r.loss[k].second)) << " ";
        avg << fmt("%.1f", x) << "," << fmt("%.1f", Y(smooth[k])) << " ";
      }
      os << "<polyline points=\"" << raw.str() << "\" fill=\"none\" stroke=\"" << color(i)
         << "\" stroke-opacity=\"0.3\" stroke-width=\"1\"/>\n"
         << "<polyline points=\"" << avg.str() << "\" fill=\"none\" stroke=\"" << color(i)
         << "\" stroke-width=\"2.2\"><title>" << html_escape(r.name) << " loss</title></polyline>\n";
    }
    for (const auto& [step, v] : r.val_loss)
      if (std::isfinite(v))
        os << "<circle cx=\"" << fmt("%.1f", X(static_cast<double>(step))) << "\" cy=\"" << fmt("%.1f", Y(v))
           << "\" r=\"4.5\" fill=\"white\" stroke=\"" << color(i) << "\" stroke-width=\"2\"><title>"
           << html_escape(r.name) << " val_loss " << fmt("%.4f", v) << " at step " << step << "</title></circle>\n";
    // The legend, top right.
    const double ly = T + 16 + 18.0 * static_cast<double>(i);
    os << "<line x1=\"" << W - R - 190 << "\" x2=\"" << W - R - 166 << "\" y1=\"" << ly - 4 << "\" y2=\"" << ly - 4
       << "\" stroke=\"" << color(i) << "\" stroke-width=\"2.2\"/><text x=\"" << W - R - 160 << "\" y=\"" << ly
       << "\">" << html_escape(r.name) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

std::string runs_table(const std::vector<RunMetrics>& runs) {
  std::ostringstream os;
  os << "<table>\n<tr><th>run</th><th>steps</th><th>first loss</th><th>last loss</th><th>last val_loss</th>"
        "<th>tokens/s</th><th>training time</th><th>directory</th></tr>\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = runs[i];
    os << "<tr><td><span class=\"swatch\" style=\"background:" << color(i) << "\"></span>" << html_escape(r.name)
       << "</td><td>" << (r.loss.empty() ? 0 : r.loss.back().first) << "</td><td>"
       << (r.loss.empty() ? "-" : fmt("%.4f", r.loss.front().second)) << "</td><td>"
       << (r.loss.empty() ? "-" : fmt("%.4f", r.loss.back().second)) << "</td><td>"
       << (r.val_loss.empty() ? "-" : fmt("%.4f", r.val_loss.back().second)) << "</td><td>"
       << (r.tokens_per_s > 0 ? fmt("%.0f", r.tokens_per_s) : "-") << "</td><td>"
       << (r.train_seconds > 0 ? fmt("%.0f s", r.train_seconds) : "-") << "</td><td><code>" << html_escape(r.dir)
       << "</code></td></tr>\n";
  }
  os << "</table>\n";
  return os.str();
}

std::string accuracy_table(const std::vector<EvalResults>& evals) {
  std::ostringstream os;
  os << "<table>\n<tr><th>model</th><th>correct</th><th>accuracy</th><th></th><th>results</th></tr>\n";
  for (const EvalResults& e : evals) {
    const double pct = 100.0 * e.accuracy();
    os << "<tr><td>" << html_escape(e.name) << "</td><td>" << e.correct << " / " << e.records.size()
       << "</td><td class=\"num\">" << fmt("%.1f%%", pct) << "</td><td><div class=\"bar\"><div style=\"width:"
       << fmt("%.1f", pct) << "%\"></div></div></td><td><code>" << html_escape(e.path) << "</code></td></tr>\n";
  }
  os << "</table>\n";
  return os.str();
}

std::string examples_table(const std::vector<EvalResults>& evals, int64_t count) {
  if (evals.empty() || count <= 0) return "";
  // Index -> record, per evaluation; the examples are the indices all share.
  std::vector<std::map<int64_t, const GenerationRecord*>> by_index(evals.size());
  for (size_t e = 0; e < evals.size(); ++e)
    for (const GenerationRecord& r : evals[e].records) by_index[e][r.index] = &r;
  std::vector<int64_t> disagree, agree;
  for (const auto& [index, rec] : by_index[0]) {
    bool all = true, some_correct = false, some_wrong = false;
    for (const auto& m : by_index) {
      const auto it = m.find(index);
      if (it == m.end()) {
        all = false;
        break;
      }
      (it->second->correct ? some_correct : some_wrong) = true;
    }
    if (all) (some_correct && some_wrong ? disagree : agree).push_back(index);
  }
  std::vector<int64_t> shown = disagree;
  shown.insert(shown.end(), agree.begin(), agree.end());
  if (static_cast<int64_t>(shown.size()) > count) shown.resize(static_cast<size_t>(count));
  std::sort(shown.begin(), shown.end());

  std::ostringstream os;
  os << "<table class=\"examples\">\n<tr><th>#</th><th>prompt</th><th>reference</th>";
  for (const EvalResults& e : evals) os << "<th>" << html_escape(e.name) << "</th>";
  os << "</tr>\n";
  for (int64_t index : shown) {
    const GenerationRecord& first = *by_index[0].at(index);
    os << "<tr><td>" << index << "</td><td><pre>" << html_escape(first.prompt) << "</pre></td><td><pre>"
       << html_escape(first.reference) << "</pre></td>";
    for (const auto& m : by_index) {
      const GenerationRecord& r = *m.at(index);
      os << "<td class=\"" << (r.correct ? "ok" : "bad") << "\"><pre>" << html_escape(r.prediction) << "</pre>"
         << (r.correct ? "&#10003;" : "&#10007;") << "</td>";
    }
    os << "</tr>\n";
  }
  os << "</table>\n";
  return os.str();
}

const char* kStyle = R"(body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-weight:600}
.bar{width:200px;height:12px;background:#eee}.bar div{height:12px;background:#1f77b4}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
pre{margin:0;white-space:pre-wrap;font-size:.85em;max-width:330px}
td.ok{background:#eaf7ea}td.bad{background:#fbeaea}
.chart text{font-size:12px;fill:#333}.chart .grid{stroke:#e5e5e5}.chart .frame{fill:none;stroke:#999}
.notes{color:#555})";

}  // namespace

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

RunMetrics read_run_metrics(const std::string& name, const std::string& dir) {
  RunMetrics r;
  r.name = name;
  r.dir = dir;
  const std::string path = (std::filesystem::path(dir) / "metrics.jsonl").string();
  HALO_CHECK(std::filesystem::exists(path), "report: run '", name, "': no metrics.jsonl in ", dir);
  double tps_sum = 0;
  int64_t tps_n = 0;
  const auto number = [](const nlohmann::json& v) {
    return v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN();  // "NaN" etc. as strings
  };
  for_each_json_line(path, [&](const nlohmann::json& j, const std::string& where) {
    HALO_CHECK(j.contains("step") && j["step"].is_number_integer(), where, ": no integer \"step\"");
    const int64_t step = j["step"].get<int64_t>();
    if (j.contains("loss")) r.loss.emplace_back(step, number(j["loss"]));
    if (j.contains("val_loss")) r.val_loss.emplace_back(step, number(j["val_loss"]));
    if (j.contains("tokens_per_s") && j["tokens_per_s"].is_number()) {
      tps_sum += j["tokens_per_s"].get<double>();
      ++tps_n;
    }
    if (j.contains("step_ms") && j["step_ms"].is_number()) r.train_seconds += j["step_ms"].get<double>() / 1000.0;
  });
  r.tokens_per_s = tps_n > 0 ? tps_sum / static_cast<double>(tps_n) : 0.0;
  return r;
}

EvalResults read_eval_results(const std::string& name, const std::string& path) {
  EvalResults e;
  e.name = name;
  e.path = path;
  for_each_json_line(path, [&](const nlohmann::json& j, const std::string& where) {
    for (const char* key : {"prompt", "reference", "prediction"})
      HALO_CHECK(j.contains(key) && j[key].is_string(), where, ": no string \"", key, "\"");
    HALO_CHECK(j.contains("index") && j["index"].is_number_integer() && j.contains("correct") &&
                   j["correct"].is_boolean(),
               where, ": needs integer \"index\" and boolean \"correct\"");
    GenerationRecord g;
    g.index = j["index"].get<int64_t>();
    g.prompt = j["prompt"].get<std::string>();
    g.reference = j["reference"].get<std::string>();
    g.prediction = j["prediction"].get<std::string>();
    g.correct = j["correct"].get<bool>();
    e.correct += g.correct ? 1 : 0;
    e.records.push_back(std::move(g));
  });
  HALO_CHECK(!e.records.empty(), "report: ", path, " holds no results");
  return e;
}

std::string render_report_html(const std::vector<RunMetrics>& runs, const std::vector<EvalResults>& evals,
                               const ReportOptions& options) {
  std::ostringstream os;
  os << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << html_escape(options.title)
     << "</title>\n<style>\n" << kStyle << "\n</style>\n</head>\n<body>\n<h1>" << html_escape(options.title)
     << "</h1>\n";
  if (!options.notes.empty()) os << "<p class=\"notes\">" << html_escape(options.notes) << "</p>\n";
  if (!evals.empty()) os << "<h2>Accuracy</h2>\n" << accuracy_table(evals);
  if (!runs.empty()) {
    os << "<h2>Training loss</h2>\n<p class=\"notes\">Thin lines: the loss of each step; thick: its moving "
          "average; dots: validation loss.</p>\n"
       << loss_chart(runs) << runs_table(runs);
  }
  if (!evals.empty() && options.examples > 0)
    os << "<h2>Examples</h2>\n<p class=\"notes\">Examples where the models disagree come first.</p>\n"
       << examples_table(evals, options.examples);
  os << "</body>\n</html>\n";
  return os.str();
}

}  // namespace halo
