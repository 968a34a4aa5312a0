#include "halo/recipe.h"

#include "core/error.h"

namespace halo {

namespace {
constexpr std::string_view kMethodNames[] = {"bf16", "halo0", "halo1", "halo2", "ideal"};

std::string accepted() {
  std::string s;
  for (const auto& n : recipe_names()) s += (s.empty() ? "" : ", ") + n;
  return s + "; options after '+': tensor, row, 1x128, 128x128, e5m2, sr, sim, promote";
}
}  // namespace

std::vector<std::string> recipe_names() {
  std::vector<std::string> names{"bf16"};
  for (int m = 1; m < 5; ++m)
    for (const char* f : {"int8", "fp8"}) names.push_back(std::string(kMethodNames[m]) + "-" + f);
  return names;
}

std::string Recipe::name() const {
  std::string s(kMethodNames[static_cast<int>(method)]);
  if (method != Method::bf16) s += format == DType::i8 ? "-int8" : "-fp8";
  if (granularity != Granularity::tensor) s += "+" + std::string(granularity_name(granularity));
  if (grad_format == DType::e5m2) s += "+e5m2";
  if (stochastic_grad) s += "+sr";
  if (simulate) s += "+sim";
  if (promote) s += "+promote";
  return s;
}

Recipe parse_recipe(std::string_view spec) {
  Recipe r;
  const size_t plus = spec.find('+');
  const std::string_view base = spec.substr(0, plus);
  bool found = false;
  if (base == "bf16") {
    found = true;
  } else if (const size_t dash = base.find('-'); dash != std::string_view::npos) {
    const std::string_view method = base.substr(0, dash), format = base.substr(dash + 1);
    for (int m = 1; m < 5; ++m) {
      if (method != kMethodNames[m] || (format != "int8" && format != "fp8")) continue;
      r.method = static_cast<Method>(m);
      r.format = r.grad_format = format == "int8" ? DType::i8 : DType::e4m3;
      found = true;
    }
  }
  HALO_CHECK(found, "unknown recipe '", spec, "' (accepted: ", accepted(), ")");
  std::string_view rest = plus == std::string_view::npos ? "" : spec.substr(plus + 1);
  while (!rest.empty()) {
    const size_t next = rest.find('+');
    const std::string_view opt = rest.substr(0, next);
    rest = next == std::string_view::npos ? "" : rest.substr(next + 1);
    HALO_CHECK(r.quantized(), "recipe '", spec, "': bf16 takes no options");
    if (opt == "e5m2") {
      HALO_CHECK(r.format == DType::e4m3, "recipe '", spec, "': e5m2 gradients need an fp8 recipe");
      r.grad_format = DType::e5m2;
    } else if (opt == "sr") {
      r.stochastic_grad = true;
    } else if (opt == "sim") {
      r.simulate = true;
    } else if (opt == "promote") {
      r.promote = true;
    } else {
      try {
        r.granularity = parse_granularity(opt);
      } catch (const Error&) {
        HALO_FAIL("recipe '", spec, "': unknown option '", opt, "' (accepted: ", accepted(), ")");
      }
    }
  }
  HALO_CHECK(!(r.format == DType::i8 && !r.simulate &&
               (r.granularity == Granularity::block1x128 || r.granularity == Granularity::block128x128)),
             "recipe '", spec, "': INT8 GEMMs take per-tensor or per-row scales only (block scales need "
             "fp8, or +sim)");
  HALO_CHECK(!r.promote || (r.format == DType::e4m3 && !r.simulate &&
                            (r.granularity == Granularity::tensor || r.granularity == Granularity::row)),
             "recipe '", spec, "': promote is about FP8 GEMMs on the GPU with tensor or row scales (block "
             "scales always promote; +sim runs no FP8 GEMM)");
  HALO_CHECK(!(r.method == Method::ideal && r.granularity != Granularity::tensor), "recipe '", spec,
             "': ideal recipes use no scales");
  return r;
}

std::vector<Recipe> parse_recipe_list(std::string_view specs) {
  std::vector<Recipe> out;
  while (!specs.empty()) {
    const size_t comma = specs.find(',');
    const std::string_view one = specs.substr(0, comma);
    if (!one.empty()) out.push_back(parse_recipe(one));
    specs = comma == std::string_view::npos ? "" : specs.substr(comma + 1);
  }
  HALO_CHECK(!out.empty(), "no recipe given (accepted: ", accepted(), ")");
  return out;
}

QuantSpec operand_spec(const Recipe& r) {
  QuantSpec s;
  s.dtype = r.format;
  s.granularity = r.granularity;
  s.scaled = r.method != Method::ideal;
  return s;
}

QuantSpec gradient_spec(const Recipe& r, uint64_t seed, uint64_t stream) {
  QuantSpec s = operand_spec(r);
  s.dtype = r.grad_format;
  s.stochastic = r.stochastic_grad;
  s.seed = seed;
  s.stream = stream;
  return s;
}

}  // namespace halo
