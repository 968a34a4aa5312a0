#include "core/dtype.h"

#include "core/error.h"

namespace halo {

namespace {
constexpr std::string_view kDTypeNames[] = {"f32", "bf16", "f16", "e4m3", "e5m2", "i8", "i32"};
}

std::string_view dtype_name(DType t) { return kDTypeNames[static_cast<int>(t)]; }

DType parse_dtype(std::string_view name) {
  for (int i = 0; i < 7; ++i)
    if (kDTypeNames[i] == name) return static_cast<DType>(i);
  HALO_FAIL("unknown dtype '", name, "' (expected f32, bf16, f16, e4m3, e5m2, i8 or i32)");
}

std::string_view device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

}  // namespace halo
