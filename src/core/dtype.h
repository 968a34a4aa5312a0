// Element types and devices.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace halo {

enum class DType : uint8_t { f32, bf16, f16, e4m3, e5m2, i8, i32 };
enum class Device : uint8_t { cpu, cuda };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::e4m3: case DType::e5m2: case DType::i8: return 1;
  }
  return 0;
}

constexpr bool is_8bit(DType t) { return dtype_size(t) == 1; }
constexpr bool is_fp8(DType t) { return t == DType::e4m3 || t == DType::e5m2; }

std::string_view dtype_name(DType t);
DType parse_dtype(std::string_view name);  // throws on an unknown name
std::string_view device_name(Device d);

}  // namespace halo
