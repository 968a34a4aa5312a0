// GGUF files (llama.cpp's format) in: header, metadata, tensor infos, and the
// tensors dequantized to f32 / bf16 / f16. A small writer, for tests and fixtures.
//
// A file (version 2 or 3, little-endian) is:
//   "GGUF", u32 version, u64 tensor_count, u64 kv_count,
//   kv_count times:     string key, u32 value type, value
//   tensor_count times: string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset
//   padding to `alignment` (metadata general.alignment, a u32; default 32),
//   then the data section; each tensor's offset counts from its start and is a
//   multiple of the alignment.
// A string is a u64 byte count and the bytes (UTF-8, no terminator); an array
// is a u32 element type, a u64 count and the elements. ne[0] is the innermost
// (contiguous) dimension: a PyTorch [rows, cols] weight has ne = {cols, rows}.
// Quantized types store ne[0] in blocks of 32 or 256 elements (ggml's layouts;
// the decoders in gguf.cpp describe each).
//
// The reader maps the file read-only and validates every field before handing
// out a byte (bounds, overflow, tensor sizes against their type, alignment,
// overlap): a corrupt or hostile file gives an Error naming the file and the
// key or tensor, never a read out of bounds.
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

// ggml's tensor types, by their number in the file.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeInfo {
  std::string_view name;  // "Q4_K"
  int64_t block = 0;      // elements per block (1 for plain types)
  size_t bytes = 0;       // bytes per block
  bool dequantizable = false;  // dequantize() decodes it
};
// The type's layout, or nothing for a number ggml does not define (or one
// whose layout changed, as Q8_1's did).
std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type);
std::string ggml_type_name(uint32_t type);  // "Q4_K", or "type 99"
// The types dequantize() decodes, comma-separated (for messages).
std::string ggml_dequantizable_types();

// Decodes n elements of `type` from `src` (n a multiple of the block size) to
// f32, exactly as ggml does (each value is the block's f16/f32 scale times its
// small integer, plus its offset: the float arithmetic of ggml's reference
// dequantizers). Large inputs are split over OpenMP threads.
void dequantize(GgmlType type, const void* src, float* dst, int64_t n);

// ---- metadata -----------------------------------------------------------------------------

enum class GgufValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
std::string gguf_value_type_name(GgufValueType t);  // "u32", "array of string", ...

// One metadata value: a scalar or an array of scalars (GGUF allows arrays of
// arrays; no writer in use makes them, and the reader refuses them).
struct GgufValue {
  GgufValueType type = GgufValueType::u32;
  GgufValueType elem = GgufValueType::u32;  // arrays: the elements' type
  // The elements (one for a scalar) in the vector for their kind: integers
  // and bools in `ints` (a u64 keeps its bits: values above 2^63 read negative),
  // f32 and f64 in `floats` (an f32 as the shortest decimal that reads back
  // as that f32: 1e-5f is 1e-05, not 9.99999974737875e-06), strings in `strings`.
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;

  bool is_array() const { return type == GgufValueType::array; }
  GgufValueType element_type() const { return is_array() ? elem : type; }
  size_t size() const;  // element count; 1 for a scalar

  static GgufValue integer(GgufValueType t, int64_t v);  // u8..i64
  static GgufValue real(GgufValueType t, double v);      // f32 or f64
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue integers(GgufValueType elem, std::vector<int64_t> v);
  static GgufValue reals(GgufValueType elem, std::vector<double> v);
  static GgufValue strings_of(std::vector<std::string> v);
  bool operator==(const GgufValue&) const = default;
};

// ---- reading -----------------------------------------------------------------------------

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;       // a GgmlType number
  std::vector<int64_t> ne; // the file's dimensions, innermost first
  Shape shape;             // PyTorch's order (outermost first): ne reversed
  int64_t numel = 0;
  uint64_t offset = 0;     // in the data section
  const std::byte* data = nullptr;  // valid while the reader lives
  size_t nbytes = 0;
};

class GgufReader {
 public:
  explicit GgufReader(const std::string& path);
  ~GgufReader();
  GgufReader(GgufReader&&) noexcept;
  GgufReader& operator=(GgufReader&&) noexcept;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // the data section's start in the file

  // Metadata in file order, and by key.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(const std::string& key) const;  // null when absent
  // Typed look-ups: nothing when the key is absent; an Error naming the file,
  // the key and both types when it holds another type.
  std::optional<int64_t> get_int(const std::string& key) const;  // any integer scalar (not bool)
  std::optional<double> get_float(const std::string& key) const; // a float or integer scalar
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  const std::vector<std::string>* get_strings(const std::string& key) const;  // array of strings
  const std::vector<int64_t>* get_ints(const std::string& key) const;         // array of integers

  // Tensors in file order, and by name.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const GgufTensorInfo& tensor(const std::string& name) const;  // throws naming the file
  // A new host tensor [shape] holding the named tensor decoded to `dtype`
  // (f32, bf16 or f16: through f32, rounding to nearest even).
  Tensor read(const std::string& name, DType dtype = DType::f32) const;

  struct Mapping;

 private:
  std::string path_;
  std::unique_ptr<Mapping> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// ---- writing -----------------------------------------------------------------------------

// Builds a GGUF file: metadata in the order set, tensors in the order added,
// each at the next multiple of the alignment (general.alignment if set, else 32).
class GgufWriter {
 public:
  void set(const std::string& key, GgufValue value);  // replaces an existing key in place
  // Raw block bytes of `type` with dimensions `ne` (innermost first); the size
  // must match the type.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> ne, std::string bytes);
  // A host f32, f16 or bf16 tensor, stored in its own type (shape reversed into ne).
  void add_tensor(const std::string& name, const Tensor& t);

  std::string bytes(uint32_t version = 3) const;  // the whole file
  void write(const std::string& path, uint32_t version = 3) const;  // atomic

 private:
  struct Entry {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::string data;
  };
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Entry> tensors_;
};

}  // namespace halo
