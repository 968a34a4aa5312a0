#include "io/safetensors.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "core/error.h"
#include "io/mapped_file.h"
#include "io/atomic_file.h"

namespace halo {

// The format is little-endian; so is every machine we build for.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The safetensors library refuses headers above 100 MB; a larger length is a
// corrupt or hostile file, not a model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

struct DTypeName {
  std::string_view name;
  size_t size;
  std::optional<DType> dtype;
};
constexpr DTypeName kDTypes[] = {
    {"F32", 4, DType::f32},       {"BF16", 2, DType::bf16},    {"F16", 2, DType::f16},
    {"F8_E4M3", 1, DType::e4m3},  {"F8_E5M2", 1, DType::e5m2}, {"I8", 1, DType::i8},
    {"I32", 4, DType::i32},       {"F64", 8, std::nullopt},    {"I64", 8, std::nullopt},
    {"U64", 8, std::nullopt},     {"U32", 4, std::nullopt},    {"I16", 2, std::nullopt},
    {"U16", 2, std::nullopt},     {"U8", 1, std::nullopt},     {"BOOL", 1, std::nullopt},
    {"F8_E8M0", 1, std::nullopt}, {"C64", 8, std::nullopt},
};

bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16 || is_fp8(t); }

std::string offsets_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// A JSON value as a non-negative integer, or nothing.
std::optional<uint64_t> as_count(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

}  // namespace

size_t safetensors_dtype_size(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.size;
  return 0;
}

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

std::string_view dtype_to_safetensors(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  HALO_FAIL("dtype ", dtype_name(dtype), " has no safetensors name");
}

// ---- reading ----------------------------------------------------------------

struct SafetensorsReader::Mapping {
  std::string path;
  const std::byte* base = nullptr;
  size_t size = 0;
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;

  ~Mapping() {
    if (base) ::munmap(const_cast<std::byte*>(base), size);
  }
};

namespace {

using Mapping = SafetensorsReader::Mapping;

void parse_metadata(const json& v, Mapping& m) {
  if (v.is_null()) return;
  HALO_CHECK(v.is_object(), m.path, ": \"__metadata__\" must be an object of strings, got ", v.dump());
  for (const auto& [key, value] : v.items()) {
    HALO_CHECK(value.is_string(), m.path, ": \"__metadata__\" entry '", key, "' must be a string, got ",
               value.dump());
    m.metadata[key] = value.get<std::string>();
  }
}

// Validates one header entry against the data buffer [data, data + buffer_size).
SafetensorsEntry parse_entry(const std::string& name, const json& v, const Mapping& m, const std::byte* data,
                             uint64_t buffer_size) {
  const std::string where = m.path + ": tensor '" + name + "': ";
  HALO_CHECK(v.is_object(), where, "entry must be an object, got ", v.dump());
  SafetensorsEntry e;
  e.file = m.path;

  HALO_CHECK(v.contains("dtype") && v["dtype"].is_string(), where, "missing or non-string \"dtype\"");
  e.dtype = v["dtype"].get<std::string>();
  const size_t elem = safetensors_dtype_size(e.dtype);
  HALO_CHECK(elem != 0, where, "unknown dtype '", e.dtype, "'");

  HALO_CHECK(v.contains("shape") && v["shape"].is_array(), where, "missing or non-array \"shape\"");
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : v["shape"]) {
    const auto n = as_count(d);
    HALO_CHECK(n && *n <= uint64_t{INT64_MAX}, where, "shape ", v["shape"].dump(),
               " has a dimension that is not a non-negative integer");
    e.shape.push_back(static_cast<int64_t>(*n));
    overflow |= __builtin_mul_overflow(numel, *n, &numel);
  }
  uint64_t need = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t{elem}, &need);

  const json* offs = v.contains("data_offsets") ? &v["data_offsets"] : nullptr;
  HALO_CHECK(offs && offs->is_array() && offs->size() == 2, where,
             "\"data_offsets\" must be [begin, end], got ", offs ? offs->dump() : "nothing");
  const auto begin = as_count((*offs)[0]), end = as_count((*offs)[1]);
  HALO_CHECK(begin && end && *begin <= *end, where, "data_offsets ", offs->dump(),
             " are not non-negative integers with begin <= end");
  HALO_CHECK(*end <= buffer_size, where, "data_offsets ", offsets_str(*begin, *end),
             " run past the end of the data buffer (", buffer_size, " bytes; file truncated?)");
  HALO_CHECK(!overflow && *end - *begin == need, where, "data_offsets ", offsets_str(*begin, *end), " hold ",
             *end - *begin, " bytes but ", e.dtype, shape_str(e.shape), " needs ",
             overflow ? std::string("more than 2^64") : std::to_string(need));
  e.data = data + *begin;
  e.nbytes = static_cast<size_t>(need);
  return e;
}

// Maps a file and validates its header: on return every entry lies inside the
// file and no two overlap.
std::unique_ptr<Mapping> map_safetensors(const std::string& path) {
  auto m = std::make_unique<Mapping>();
  m->path = path;
  const MappedBytes mapped = map_file_readonly(path, 8, "the 8-byte header length (truncated?)");
  m->base = mapped.base;
  m->size = mapped.size;
  const uint64_t size = mapped.size;

  uint64_t header_len;
  std::memcpy(&header_len, m->base, 8);
  HALO_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len,
             " is above the 100 MB limit (not a safetensors file?)");
  HALO_CHECK(header_len <= size - 8, path, ": header length ", header_len, " runs past the end of the file (",
             size, " bytes; truncated?)");
  const char* text = reinterpret_cast<const char*>(m->base + 8);
  json header;
  try {
    header = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    HALO_FAIL(path, ": header is not valid JSON: ", e.what());
  }
  HALO_CHECK(header.is_object(), path, ": header must be a JSON object, got ", header.type_name());

  const std::byte* data = m->base + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__")
      parse_metadata(v, *m);
    else
      m->entries.emplace(name, parse_entry(name, v, *m, data, buffer_size));
  }

  // Overlap check: sorted by start, each (non-empty) tensor must begin at or
  // after the previous one's end. Gaps are allowed: other writers may align data.
  std::vector<const std::pair<const std::string, SafetensorsEntry>*> by_start;
  for (const auto& kv : m->entries)
    if (kv.second.nbytes) by_start.push_back(&kv);
  std::sort(by_start.begin(), by_start.end(),
            [](auto* a, auto* b) { return a->second.data < b->second.data; });
  for (size_t i = 1; i < by_start.size(); ++i) {
    const auto& [pname, prev] = *by_start[i - 1];
    const auto& [name, cur] = *by_start[i];
    if (cur.data < prev.data + prev.nbytes) {
      const auto off = [&](const SafetensorsEntry& e) {
        const uint64_t b = static_cast<uint64_t>(e.data - data);
        return offsets_str(b, b + e.nbytes);
      };
      HALO_FAIL(path, ": tensor '", name, "' data_offsets ", off(cur), " overlap tensor '", pname, "' ",
                off(prev));
    }
  }
  return m;
}

}  // namespace

SafetensorsReader::~SafetensorsReader() = default;
SafetensorsReader::SafetensorsReader(SafetensorsReader&&) noexcept = default;
SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&&) noexcept = default;

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::string file = path, index;
  if (fs::is_directory(path)) {
    // transformers' order: the single file first, then the index.
    const fs::path dir(path);
    if (fs::exists(dir / kSingleFile)) {
      file = (dir / kSingleFile).string();
    } else {
      HALO_CHECK(fs::exists(dir / kIndexFile), path, ": directory has neither ", kSingleFile, " nor ",
                 kIndexFile);
      index = (dir / kIndexFile).string();
    }
  } else if (path.ends_with(".json")) {
    index = path;
  }

  if (index.empty()) {
    files_.push_back(map_safetensors(file));
    entries_ = files_[0]->entries;
    metadata_ = files_[0]->metadata;
    return;
  }

  json j;
  try {
    j = json::parse(read_file(index));
  } catch (const json::exception& e) {
    HALO_FAIL(index, ": not valid JSON: ", e.what());
  }
  HALO_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index,
             ": no \"weight_map\" object");
  // Shards in first-mention order, each mapped once.
  std::map<std::string, size_t> shard_of_file;
  const fs::path dir = fs::path(index).parent_path();
  for (const auto& [name, v] : j["weight_map"].items()) {
    HALO_CHECK(v.is_string(), index, ": weight_map entry for tensor '", name, "' must be a file name, got ",
               v.dump());
    const std::string shard = v.get<std::string>();
    HALO_CHECK(!shard.empty() && fs::path(shard).is_relative(), index, ": tensor '", name, "' is mapped to '",
               shard, "', not a file name beside the index");
    auto it = shard_of_file.find(shard);
    if (it == shard_of_file.end()) {
      const std::string shard_path = (dir / shard).string();
      HALO_CHECK(fs::exists(shard_path), index, ": shard '", shard, "' (holding tensor '", name,
                 "') not found at ", shard_path);
      files_.push_back(map_safetensors(shard_path));
      it = shard_of_file.emplace(shard, files_.size() - 1).first;
    }
    const auto& entries = files_[it->second]->entries;
    const auto e = entries.find(name);
    HALO_CHECK(e != entries.end(), index, ": tensor '", name, "' is mapped to shard '", shard,
               "', which does not hold it");
    entries_.emplace(name, e->second);
  }
  if (!files_.empty()) metadata_ = files_[0]->metadata;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& SafetensorsReader::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  HALO_CHECK(it != entries_.end(), path_, ": no tensor '", name, "' (", entries_.size(), " tensors)");
  return it->second;
}

Tensor SafetensorsReader::read(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const auto dtype = dtype_from_safetensors(e.dtype);
  HALO_CHECK(dtype, e.file, ": tensor '", name, "': dtype ", e.dtype, " has no halo dtype to read it as");
  return read(name, *dtype);
}

Tensor SafetensorsReader::read(const std::string& name, DType dtype) const {
  const SafetensorsEntry& e = entry(name);
  const auto src = dtype_from_safetensors(e.dtype);
  HALO_CHECK(src && (*src == dtype || (is_float(*src) && is_float(dtype))), e.file, ": tensor '", name,
             "': cannot read ", e.dtype, " as ", dtype_name(dtype),
             " (conversions are among F32, BF16, F16, F8_E4M3 and F8_E5M2)");
  Tensor out = Tensor::empty(e.shape, dtype);
  if (*src == dtype) {
    if (e.nbytes) std::memcpy(out.data(), e.data, e.nbytes);
    return out;
  }
  // load_float reads whole elements; a file may place a tensor at an odd
  // offset, so copy it to aligned memory first when it is not aligned.
  const void* from = e.data;
  Tensor aligned;
  if (reinterpret_cast<uintptr_t>(from) % dtype_size(*src) != 0) {
    aligned = Tensor::empty(e.shape, *src);
    std::memcpy(aligned.data(), e.data, e.nbytes);
    from = aligned.data();
  }
  const int64_t n = out.numel();
  void* to = out.data();
#pragma omp parallel for if (n >= (1 << 18))
  for (int64_t i = 0; i < n; ++i) store_float(to, dtype, i, load_float(from, *src, i));
  return out;
}

// ---- writing ----------------------------------------------------------------

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const SafetensorsMetadata& metadata) {
  // Largest element size first, then by name (the safetensors library's
  // order): with the data starting 8-aligned, every tensor is then aligned to
  // its element size in a reader's map.
  std::vector<NamedTensors::const_iterator> order;
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    HALO_CHECK(!it->first.empty() && it->first != "__metadata__", path, ": invalid tensor name '", it->first,
               "'");
    HALO_CHECK(it->second.defined(), path, ": tensor '", it->first, "' is undefined");
    order.push_back(it);
  }
  std::stable_sort(order.begin(), order.end(), [](auto a, auto b) {
    return dtype_size(a->second.dtype()) > dtype_size(b->second.dtype());
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (auto it : order) {
    const Tensor& t = it->second;
    header[it->first] = {{"dtype", dtype_to_safetensors(t.dtype())},
                         {"shape", t.shape()},
                         {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();  // nlohmann's objects are std::maps: keys come out sorted
  } catch (const json::exception& e) {
    HALO_FAIL(path, ": cannot encode the header (tensor names must be UTF-8): ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // as Hugging Face pads: data starts 8-aligned
  const uint64_t len = text.size();

  write_file_atomic(path, [&](const WriteBytes& write) {
    write(&len, 8);
    write(text.data(), text.size());
    for (auto it : order) {
      const Tensor host = it->second.to(Device::cpu);  // one tensor at a time
      write(host.data(), host.nbytes());
    }
  });
}

std::vector<std::string> write_safetensors_checkpoint(const std::string& dir, const NamedTensors& tensors,
                                                      size_t max_shard_bytes,
                                                      const SafetensorsMetadata& metadata) {
  HALO_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive");
  make_directories(dir);
  const fs::path d(dir);
  const auto remove_stale = [&](const char* name) {
    std::error_code ec;
    fs::remove(d / name, ec);
    HALO_CHECK(!ec, (d / name).string(), ": cannot remove the stale file: ", ec.message());
  };

  // Shards in name order, as transformers fills them: a new shard starts when
  // the next tensor would push the current one past the limit.
  std::vector<NamedTensors> shards(1);
  size_t total = 0, current = 0;
  for (const auto& [name, t] : tensors) {
    const size_t bytes = t.defined() ? t.nbytes() : 0;
    if (!shards.back().empty() && current + bytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().emplace(name, t);
    current += bytes;
    total += bytes;
  }

  if (shards.size() == 1) {
    write_safetensors((d / kSingleFile).string(), tensors, metadata);
    remove_stale(kIndexFile);
    return {kSingleFile};
  }

  std::vector<std::string> files;
  json weight_map = json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    write_safetensors((d / name).string(), shards[i], metadata);
    for (const auto& kv : shards[i]) weight_map[kv.first] = name;
    files.push_back(name);
  }
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_file_atomic((d / kIndexFile).string(), index.dump(2) + "\n");
  files.push_back(kIndexFile);
  // A reader prefers model.safetensors: a stale one would shadow this checkpoint.
  remove_stale(kSingleFile);
  return files;
}

}  // namespace halo
