// Metrics: the JSON-lines file (fresh and resumed), log-line formatting, and
// the progress bar on a terminal and elsewhere.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>

#include "io/atomic_file.h"
#include "testing.h"
#include "train/metrics.h"

namespace halo {
namespace {

namespace fs = std::filesystem;

TEST(Metrics, FormatsDurationsAndCounts) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(44.6), "45s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(2 * 86400 + 3 * 3600 + 59), "2d03h");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "?");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(12345), "12.3k");
  EXPECT_EQ(format_count(4.561e6), "4.56M");
  EXPECT_EQ(format_count(7.891e9), "7.89G");
}

TEST(Metrics, StepLine) {
  StepStats s;
  s.step = 100;
  s.total_steps = 1000;
  s.loss = 2.34561;
  s.grad_norm = 0.8123;
  s.lr = 3e-4;
  s.tokens_per_s = 12345;
  s.mfu = 0.4123;
  s.eta_s = 3720;
  EXPECT_EQ(format_step_line(s),
            "step  100/1000 | loss 2.3456 | norm 0.812 | lr 3.00e-04 | 12.3k tok/s | MFU 41.2% | ETA 1h02m");
  StepStats t;  // unknown figures are left out; a skipped step says so
  t.step = 7;
  t.total_steps = 10;
  t.loss = 3.0;
  t.grad_norm = std::numeric_limits<double>::quiet_NaN();
  t.skipped = true;
  EXPECT_EQ(format_step_line(t), "step  7/10 | loss 3.0000 | norm nan | skipped (non-finite gradients)");
}

TEST(Metrics, ProgressBar) {
  EXPECT_EQ(render_progress(45, 100, 10, 185), "[####......]  45% 45/100 ETA 3m05s");
  EXPECT_EQ(render_progress(0, 100, 4, -1), "[....]   0% 0/100");
  EXPECT_EQ(render_progress(100, 100, 4, 0), "[####] 100% 100/100 ETA 0s");

  char* buf = nullptr;
  size_t size = 0;
  std::FILE* out = open_memstream(&buf, &size);
  {
    ProgressBar plain(10, out, /*terminal=*/false);
    plain.draw(3, 10);  // nothing off a terminal
    plain.print("step 3");
    plain.finish();
    std::fflush(out);
    EXPECT_EQ(std::string(buf, size), "step 3\n");
  }
  {
    ProgressBar tty(10, out, /*terminal=*/true);
    tty.draw(5, 1);
    tty.print("step 5");
    tty.finish();
    std::fflush(out);
    const std::string bar = render_progress(5, 10, 30, 1);
    EXPECT_EQ(std::string(buf, size),
              "step 3\n\r\033[K" + bar + "\r\033[Kstep 5\n" + bar + "\n");
  }
  std::fclose(out);
  std::free(buf);
}

TEST(Metrics, JsonLinesFreshAndResumed) {
  const fs::path dir = fs::temp_directory_path() / ("halo_metrics_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string path = (dir / "sub" / "metrics.jsonl").string();
  {
    MetricsWriter w(path, std::nullopt);  // creates the directory
    for (int step = 1; step <= 4; ++step) w.write({{"step", step}, {"loss", 4.0 - step}});
    w.write({{"event", "eval"}, {"val_loss", 1.5}});
    EXPECT_EQ(read_file(path), "{\"loss\":3.0,\"step\":1}\n{\"loss\":2.0,\"step\":2}\n{\"loss\":1.0,\"step\":3}\n"
                               "{\"loss\":0.0,\"step\":4}\n{\"event\":\"eval\",\"val_loss\":1.5}\n");  // flushed
  }
  {
    std::FILE* f = std::fopen(path.c_str(), "a");
    std::fputs("{\"step\": 5, \"lo", f);  // a line torn by a crash
    std::fclose(f);
    MetricsWriter w(path, 2);  // resumed from step 2: later steps and the torn line go
    w.write({{"step", 3}, {"loss", 0.5}});
  }
  EXPECT_EQ(read_file(path), "{\"loss\":3.0,\"step\":1}\n{\"loss\":2.0,\"step\":2}\n"
                             "{\"event\":\"eval\",\"val_loss\":1.5}\n{\"loss\":0.5,\"step\":3}\n");
  {
    MetricsWriter w(path, std::nullopt);  // a fresh run starts over
    w.write({{"step", 1}});
  }
  EXPECT_EQ(read_file(path), "{\"step\":1}\n");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace halo
