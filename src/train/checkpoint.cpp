#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <system_error>

#include "core/error.h"
#include "io/atomic_file.h"

namespace halo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kTrainerState = "trainer_state.json";
constexpr const char* kTrainingState = "training_state.safetensors";
constexpr const char* kRunConfig = "run_config.toml";
constexpr const char* kPrefix = "step-";
constexpr const char* kTempPrefix = ".tmp-step-";  // staging, replaced and deleting directories

// The step of a directory named step-<digits>, or -1.
int64_t step_of(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0 || name.size() == 5 || name.size() > 5 + 18) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  HALO_CHECK(fd >= 0, p.string(), ": cannot open to sync: ", std::system_category().message(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  HALO_CHECK(rc == 0 || (directory && err == EINVAL), p.string(), ": fsync failed: ",
             std::system_category().message(err));
}

// Every file and directory under dir, then dir itself, on disk.
void fsync_tree(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_symlink()) continue;
    if (e.is_regular_file()) fsync_path(e.path(), false);
    else if (e.is_directory()) fsync_path(e.path(), true);
  }
  fsync_path(dir, true);
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  HALO_CHECK(!ec, "cannot rename ", from.string(), " to ", to.string(), ": ", ec.message());
}

json number_or_null(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

bool same_double(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

}  // namespace

// ---- trainer state -----------------------------------------------------------------------

bool TrainerState::operator==(const TrainerState& o) const {
  return step == o.step && data == o.data && seed == o.seed && tokens == o.tokens &&
         skipped_steps == o.skipped_steps && same_double(loss, o.loss) && same_double(val_loss, o.val_loss) &&
         extra == o.extra;
}

json to_json(const TrainerState& s) {
  return json{{"format", "halo trainer state"}, {"version", 1},
              {"step", s.step},                 {"epoch", s.data.epoch},
              {"doc_index", s.data.index},      {"doc_offset", s.data.offset},
              {"seed", s.seed},                 {"tokens", s.tokens},
              {"skipped_steps", s.skipped_steps}, {"loss", number_or_null(s.loss)},
              {"val_loss", number_or_null(s.val_loss)}, {"extra", s.extra}};
}

TrainerState trainer_state_from_json(const json& j, const std::string& source) {
  HALO_CHECK(j.is_object(), source, ": expected a JSON object");
  HALO_CHECK(j.value("format", "") == "halo trainer state", source, ": not a halo trainer state (no \"format\": "
             "\"halo trainer state\")");
  HALO_CHECK(j.value("version", 0) == 1, source, ": unsupported trainer state version ", j.value("version", 0));
  auto integer = [&](const char* key) -> int64_t {
    HALO_CHECK(j.contains(key) && j[key].is_number_integer(), source, ": key '", key, "' missing or not an integer");
    return j[key].get<int64_t>();
  };
  auto number = [&](const char* key) -> double {
    HALO_CHECK(j.contains(key) && (j[key].is_number() || j[key].is_null()), source, ": key '", key,
               "' missing or not a number");
    return j[key].is_null() ? std::numeric_limits<double>::quiet_NaN() : j[key].get<double>();
  };
  TrainerState s;
  s.step = integer("step");
  s.data = {integer("epoch"), integer("doc_index"), integer("doc_offset")};
  HALO_CHECK(j.contains("seed") && j["seed"].is_number_unsigned(), source, ": key 'seed' missing or not an "
             "unsigned integer");
  s.seed = j["seed"].get<uint64_t>();
  s.tokens = integer("tokens");
  s.skipped_steps = integer("skipped_steps");
  s.loss = number("loss");
  s.val_loss = number("val_loss");
  s.extra = j.value("extra", json::object());
  HALO_CHECK(s.step >= 0 && s.data.epoch >= 0 && s.data.index >= 0 && s.data.offset >= 0 && s.tokens >= 0, source,
             ": negative step, data position or token count");
  return s;
}

// ---- saving ------------------------------------------------------------------------------

std::string checkpoint_name(int64_t step) {
  HALO_CHECK(step >= 0, "checkpoint_name: negative step ", step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%08lld", kPrefix, static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& out, const TrainerState& state, const NamedTensors& optimizer_state,
                            const std::string& config_toml,
                            const std::function<void(const std::string& dir)>& write_model, int64_t keep) {
  make_directories(out);
  remove_incomplete_checkpoints(out);
  const std::string name = checkpoint_name(state.step);
  const fs::path final_dir = fs::path(out) / name;
  const fs::path staging = fs::path(out) / (std::string(kTempPrefix) + name.substr(5));
  const fs::path replaced = fs::path(staging).concat(".old");
  try {
    make_directories(staging.string());
    write_model(staging.string());
    write_safetensors((staging / kTrainingState).string(), optimizer_state, {{"format", "halo optimizer state"}});
    write_file_atomic((staging / kRunConfig).string(), config_toml);
    write_file_atomic((staging / kTrainerState).string(), to_json(state).dump(2) + "\n");  // last
    fsync_tree(staging);
    // A checkpoint of the same step is moved aside, not deleted, until the new one is in place.
    const bool exists = fs::exists(final_dir);
    if (exists) rename_or_fail(final_dir, replaced);
    rename_or_fail(staging, final_dir);
    fsync_path(out, true);
    if (exists) fs::remove_all(replaced);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    if (!fs::exists(final_dir, ec) && fs::exists(replaced, ec)) fs::rename(replaced, final_dir, ec);
    throw;
  }
  if (keep > 0) {
    auto all = list_checkpoints(out);
    std::erase_if(all, [&](const auto& c) { return c.second == final_dir.string(); });
    const int64_t excess = static_cast<int64_t>(all.size()) + 1 - keep;
    for (int64_t i = 0; i < excess; ++i) {
      // Renamed first so a crash mid-delete never leaves a partial step-* directory.
      const fs::path victim(all[i].second);
      const fs::path doomed = fs::path(out) / (std::string(kTempPrefix) + victim.filename().string().substr(5) + ".del");
      std::error_code ec;
      fs::rename(victim, doomed, ec);
      if (!ec) fs::remove_all(doomed, ec);
      if (ec)
        std::fprintf(stderr, "halo: warning: could not delete old checkpoint %s: %s\n", victim.c_str(),
                     ec.message().c_str());
    }
  }
  return final_dir.string();
}

// ---- finding and reading -------------------------------------------------------------------

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& out) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(out, ec)) return found;
  for (const auto& e : fs::directory_iterator(out)) {
    const int64_t step = step_of(e.path().filename().string());
    if (step < 0 || !e.is_directory() || !fs::is_regular_file(e.path() / kTrainerState)) continue;
    found.emplace_back(step, e.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::optional<std::string> latest_checkpoint(const std::string& out) {
  const auto all = list_checkpoints(out);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

int remove_incomplete_checkpoints(const std::string& out) {
  std::error_code ec;
  if (!fs::is_directory(out, ec)) return 0;
  std::vector<fs::path> stale;
  int removed = 0;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().rfind(kTempPrefix, 0) == 0) stale.push_back(e.path());
  for (const fs::path& p : stale) {
    // A complete checkpoint moved aside while its step was saved again: put it back
    // if the crash came before the new one took its name.
    const std::string name = p.filename().string();
    if (name.size() >= 14 && name.ends_with(".old")) {
      const fs::path original = fs::path(out) / (kPrefix + name.substr(10, name.size() - 14));
      if (!fs::exists(original, ec) && fs::is_regular_file(p / kTrainerState, ec)) {
        rename_or_fail(p, original);
        continue;
      }
    }
    fs::remove_all(p, ec);
    HALO_CHECK(!ec, p.string(), ": cannot remove incomplete checkpoint: ", ec.message());
    ++removed;
  }
  return removed;
}

TrainerState load_trainer_state(const std::string& dir) {
  const std::string path = (fs::path(dir) / kTrainerState).string();
  const std::string text = read_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    HALO_FAIL(path, ": not valid JSON: ", e.what());
  }
  return trainer_state_from_json(j, path);
}

NamedTensors load_training_state(const std::string& dir) {
  const SafetensorsReader reader((fs::path(dir) / kTrainingState).string());
  NamedTensors out;
  for (const std::string& name : reader.names()) out[name] = reader.read(name);
  return out;
}

std::string load_run_config(const std::string& dir) { return read_file((fs::path(dir) / kRunConfig).string()); }

}  // namespace halo
