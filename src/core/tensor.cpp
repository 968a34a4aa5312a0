#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/allocator.h"
#include "core/error.h"
#include "core/numerics.h"
#ifdef HALO_HAS_CUDA
#include "core/cuda_check.h"
#include "core/stream.h"
#endif

namespace halo {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

Storage::Storage(size_t bytes, Device device)
    : data_(allocate(bytes, device)), bytes_(bytes), device_(device) {}
Storage::~Storage() { release(data_, bytes_, device_); }

namespace {
int64_t count(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    HALO_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
    n *= d;
  }
  return n;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(count(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_zero();
  return t;
}

Tensor Tensor::from_floats(const Shape& shape, const std::vector<float>& values, DType dtype) {
  HALO_CHECK(count(shape) == static_cast<int64_t>(values.size()), "from_floats: ", values.size(),
             " values for shape ", shape_str(shape));
  Tensor t = empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) store_float(t.data(), dtype, i, values[i]);
  return t;
}

int64_t Tensor::size(int dim) const {
  const int n = ndim();
  HALO_CHECK(dim >= -n && dim < n, "dimension ", dim, " out of range for ", describe());
  return shape_[dim < 0 ? dim + n : dim];
}

int64_t Tensor::numel() const { return count(shape_); }

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      HALO_CHECK(infer < 0, "view: more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) s[infer] = known ? numel() / known : 0;
  HALO_CHECK(count(s) == numel(), "view: cannot view ", describe(), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::rows(int64_t start, int64_t n) const {
  HALO_CHECK(ndim() >= 1 && start >= 0 && n >= 0 && start + n <= shape_[0], "rows(", start, ", ",
             n, ") out of range for ", describe());
  Tensor t = *this;
  t.shape_[0] = n;
  t.offset_ += static_cast<size_t>(start) * (nbytes() / (shape_[0] ? shape_[0] : 1));
  return t;
}

Tensor Tensor::as_2d() const {
  HALO_CHECK(ndim() >= 1, "as_2d: scalar tensor");
  return view({-1, shape_.back()});
}

Tensor Tensor::to(Device device) const {
  if (!defined() || device == this->device()) return *this;  // an undefined tensor stays undefined
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  HALO_CHECK(device() == Device::cpu, "to(dtype) converts host tensors only, got ", describe());
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype);
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), dtype, i, load_float(data(), dtype_, i));
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  HALO_CHECK(src.dtype_ == dtype_ && src.numel() == numel(), "copy_from: ", src.describe(),
             " into ", describe());
  if (nbytes() == 0) return;
  if (device() == Device::cpu && src.device() == Device::cpu) {
    std::memcpy(data(), src.data(), nbytes());
    return;
  }
#ifdef HALO_HAS_CUDA
  CUDA_CHECK(cudaMemcpyAsync(data(), src.data(), nbytes(), cudaMemcpyDefault, current_stream()));
  if (device() == Device::cpu || src.device() == Device::cpu)
    CUDA_CHECK(cudaStreamSynchronize(current_stream()));
#else
  HALO_FAIL("this build of halo has no CUDA support");
#endif
}

void Tensor::fill_zero() {
  if (nbytes() == 0) return;
  if (device() == Device::cpu) {
    std::memset(data(), 0, nbytes());
    return;
  }
#ifdef HALO_HAS_CUDA
  CUDA_CHECK(cudaMemsetAsync(data(), 0, nbytes(), current_stream()));
#endif
}

std::vector<float> Tensor::to_floats() const {
  Tensor h = to(Device::cpu);
  std::vector<float> out(static_cast<size_t>(numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = load_float(h.data(), dtype_, i);
  return out;
}

std::string Tensor::describe() const {
  std::ostringstream os;
  os << dtype_name(dtype_) << shape_str(shape_) << " " << device_name(device());
  return os.str();
}

float load_float(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f32: return static_cast<const float*>(data)[i];
    case DType::bf16: return bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::f16: return f16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::e4m3: return e4m3_to_float(static_cast<const uint8_t*>(data)[i]);
    case DType::e5m2: return e5m2_to_float(static_cast<const uint8_t*>(data)[i]);
    case DType::i8: return static_cast<const int8_t*>(data)[i];
    case DType::i32: return static_cast<float>(static_cast<const int32_t*>(data)[i]);
  }
  return 0.0f;
}

void store_float(void* data, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::f32: static_cast<float*>(data)[i] = v; break;
    case DType::bf16: static_cast<uint16_t*>(data)[i] = float_to_bf16_bits(v); break;
    case DType::f16: static_cast<uint16_t*>(data)[i] = float_to_f16_bits(v); break;
    case DType::e4m3: static_cast<uint8_t*>(data)[i] = float_to_e4m3(v); break;
    case DType::e5m2: static_cast<uint8_t*>(data)[i] = float_to_e5m2(v); break;
    case DType::i8: static_cast<int8_t*>(data)[i] = float_to_i8(v); break;
    case DType::i32: static_cast<int32_t*>(data)[i] = static_cast<int32_t>(rintf(v)); break;
  }
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  HALO_CHECK(t.shape() == expected, what, ": expected shape ", shape_str(expected), ", got ",
             t.describe());
}

void check_dtype(const Tensor& t, DType expected, const char* what) {
  HALO_CHECK(t.dtype() == expected, what, ": expected dtype ", dtype_name(expected), ", got ",
             t.describe());
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  HALO_CHECK(a.device() == b.device(), what, ": tensors on different devices: ", a.describe(),
             " and ", b.describe());
}

void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t cols) {
  HALO_CHECK(src.defined() && dst.defined() && src.ndim() >= 1 && dst.ndim() >= 1,
             "copy_columns: undefined or scalar tensor");
  const int64_t sc = src.size(-1), dc = dst.size(-1);
  const int64_t rows = sc ? src.numel() / sc : 0;
  HALO_CHECK(src.dtype() == dst.dtype(), "copy_columns: dtypes differ: ", src.describe(), " into ", dst.describe());
  HALO_CHECK((dc ? dst.numel() / dc : 0) == rows, "copy_columns: row counts differ: ", src.describe(), " into ",
             dst.describe());
  HALO_CHECK(cols >= 0 && src_col >= 0 && dst_col >= 0 && src_col + cols <= sc && dst_col + cols <= dc,
             "copy_columns: columns [", src_col, ", ", src_col + cols, ") of ", src.describe(), " into [", dst_col,
             ", ", dst_col + cols, ") of ", dst.describe(), " out of range");
  check_same_device(src, dst, "copy_columns");
  if (rows == 0 || cols == 0) return;
  const size_t es = dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.data()) + src_col * es;
  char* d = static_cast<char*>(dst.data()) + dst_col * es;
  if (!src.is_cuda()) {
#pragma omp parallel for schedule(static) if (rows * cols * static_cast<int64_t>(es) > (1 << 20))
    for (int64_t r = 0; r < rows; ++r) std::memcpy(d + r * dc * es, s + r * sc * es, cols * es);
    return;
  }
#ifdef HALO_HAS_CUDA
  CUDA_CHECK(cudaMemcpy2DAsync(d, dc * es, s, sc * es, cols * es, rows, cudaMemcpyDeviceToDevice, current_stream()));
#else
  HALO_FAIL("this build of halo has no CUDA support");
#endif
}

void device_synchronize() {
#ifdef HALO_HAS_CUDA
  if (cuda_available()) CUDA_CHECK(cudaDeviceSynchronize());
#endif
}

}  // namespace halo
