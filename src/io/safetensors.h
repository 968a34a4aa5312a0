// Safetensors checkpoints (the Hugging Face format) in and out.
//
// A file is: an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str} (optional),
//    name: {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...}
// then the data buffer; offsets count from the buffer's start. A sharded
// checkpoint is a directory with model.safetensors.index.json
//   {"metadata": {"total_size": bytes}, "weight_map": {name: "model-00001-of-00002.safetensors"}}
// beside the shards.
//
// The reader maps files read-only and validates every header before handing
// out a byte: a corrupt or hostile file gives an Error naming the file and the
// tensor, never a read out of bounds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace halo {

// Bytes per element of a safetensors dtype name ("BF16" -> 2), or 0 when the
// name is unknown or has no whole-byte size (F4, F6_*).
size_t safetensors_dtype_size(std::string_view name);
// The halo dtype a safetensors dtype maps onto ("F8_E4M3" -> e4m3), if any.
std::optional<DType> dtype_from_safetensors(std::string_view name);
std::string_view dtype_to_safetensors(DType dtype);  // f32 -> "F32"

// One tensor as it lies in a mapped file (zero-copy).
struct SafetensorsEntry {
  std::string dtype;  // the header's spelling: "BF16", "F32", "I64", ...
  Shape shape;
  const std::byte* data = nullptr;  // valid while the reader lives; aligned only as the file is
  size_t nbytes = 0;
  std::string file;  // the file holding it (for messages)
};

// Reads one safetensors file, or a checkpoint directory (model.safetensors, else
// model.safetensors.index.json and its shards, as transformers looks), or an
// index file; the API is the same whichever it is. Move-only: it owns the maps.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(SafetensorsReader&&) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&&) noexcept;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // throws naming the checkpoint
  // The "__metadata__" of the file (of the first shard when sharded).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A new host tensor holding the named tensor in its own dtype, or converted
  // to `dtype` (among f32, bf16, f16, e4m3, e5m2: through float, rounding to
  // nearest even, so every conversion is exact or correctly rounded).
  Tensor read(const std::string& name) const;
  Tensor read(const std::string& name, DType dtype) const;

  struct Mapping;  // one mapped file (defined in the .cpp)

 private:
  std::string path_;
  std::vector<std::unique_ptr<Mapping>> files_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Tensors to write, by name; std::map keeps the names sorted and unique.
using NamedTensors = std::map<std::string, Tensor>;
using SafetensorsMetadata = std::map<std::string, std::string>;
// transformers refuses a file without format "pt" when loading into PyTorch.
inline const SafetensorsMetadata kPyTorchMetadata{{"format", "pt"}};

// Writes the tensors (any device; f32, bf16, f16, e4m3, e5m2, i8, i32) to one
// file atomically. The header's keys are sorted and it is padded with spaces
// so the data starts at a multiple of 8 bytes; the data is laid out largest
// element size first, so each tensor is aligned to its element size.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const SafetensorsMetadata& metadata = kPyTorchMetadata);

// Writes a checkpoint into `dir` (created if missing): model.safetensors when
// the data fits in max_shard_bytes, else shards model-0000i-of-0000n.safetensors
// of at most max_shard_bytes each (a larger tensor gets a shard of its own) and
// model.safetensors.index.json, written last. Removes the other layout's
// stale top-level file so a reader cannot pick up an old checkpoint. Returns the
// file names written (index last).
std::vector<std::string> write_safetensors_checkpoint(
    const std::string& dir, const NamedTensors& tensors,
    size_t max_shard_bytes = 5'000'000'000,  // transformers' "5GB"
    const SafetensorsMetadata& metadata = kPyTorchMetadata);

}  // namespace halo
