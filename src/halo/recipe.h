// Recipes: named, typeable choices of how the linear layers compute
// (HALO-METHOD.md, "The levels").
//
//   bf16                      all three matmuls in BF16 (the baseline)
//   halo0-int8 / halo0-fp8    8-bit, no rotation
//   halo1-int8 / halo1-fp8    8-bit, X and W rotated along the input dim
//   halo2-int8 / halo2-fp8    as halo1, E_Y also rotated along the token dim for dX
//   ideal-int8 / ideal-fp8    plain 8-bit casts, no scales (a speed ceiling only)
//
// Options follow the name after '+': granularity (tensor | row | 1x128 | 128x128),
// e5m2 (FP8 gradients in e5m2), sr (stochastic rounding of gradients), sim
// (simulation: the same quantize/dequantize math, matmuls in f32/bf16), promote
// (see below), e.g. "halo1-fp8+row+e5m2+sr".
//
// FP8 GEMMs with tensor or row scales accumulate on the GPU without cuBLASLt's
// periodic promotion of the tensor cores' sums to FP32 ("fast accumulation", as
// NVIDIA TransformerEngine's forward GEMMs): faster; on an H100 at Llama sizes
// the sums deviate from exact ones by about 1e-2 of Y (2e-3 promoted), an
// eighth of quantization's own error, and the layer's errors against the
// unquantized product do not change in their third digit (docs/perf.md).
// +promote asks for the promotion. Block scales always promote; the CPU's sums
// are exact either way.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "kernels/quantize.h"

namespace halo {

enum class Method : uint8_t { bf16, halo0, halo1, halo2, ideal };

struct Recipe {
  Method method = Method::bf16;
  DType format = DType::bf16;      // i8 or e4m3 (operands X, W); bf16 for Method::bf16
  DType grad_format = DType::bf16; // the gradient E_Y's format: i8, e4m3 or e5m2
  Granularity granularity = Granularity::tensor;
  bool stochastic_grad = false;
  bool simulate = false;
  bool promote = false;  // FP8 GEMMs on the GPU: cuBLASLt's periodic FP32 promotion

  // The GPU's FP8 GEMMs accumulate fast (no promotion) for this recipe.
  bool fast_accum() const { return format == DType::e4m3 && !promote; }

  bool quantized() const { return method != Method::bf16; }
  bool rotates() const { return method == Method::halo1 || method == Method::halo2; }
  std::string name() const;  // canonical spelling; parse_recipe(name()) == *this
  bool operator==(const Recipe&) const = default;
};

Recipe parse_recipe(std::string_view spec);                    // throws with the accepted names
std::vector<Recipe> parse_recipe_list(std::string_view specs);  // comma-separated
std::vector<std::string> recipe_names();                       // the base names

// The quantization of each operand a recipe calls for.
QuantSpec operand_spec(const Recipe& r);
QuantSpec gradient_spec(const Recipe& r, uint64_t seed, uint64_t stream);

}  // namespace halo
