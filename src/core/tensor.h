// Tensor: a typed, shaped, contiguous view into reference-counted storage on
// one device. Views (reshape, a range of rows) share the storage.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace halo {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);

class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t bytes_;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu);
  // A f32 host tensor holding `values` (converted to `dtype`).
  static Tensor from_floats(const Shape& shape, const std::vector<float>& values,
                            DType dtype = DType::f32);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu; }
  bool is_cuda() const { return device() == Device::cuda; }

  void* data() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <class T>
  T* data_as() const { return static_cast<T*>(data()); }

  // Same storage, new shape with the same element count; one dim may be -1.
  Tensor view(const Shape& shape) const;
  // Rows [start, start + count) along the first dimension.
  Tensor rows(int64_t start, int64_t count) const;
  // Flattened to 2-D: all leading dims times the last one.
  Tensor as_2d() const;

  Tensor to(Device device) const;  // copy (or this tensor if already there, or undefined)
  Tensor to(DType dtype) const;    // host-side conversion (host tensors only)
  void copy_from(const Tensor& src);  // same dtype and element count, any devices
  void fill_zero();

  std::vector<float> to_floats() const;  // every element as float (any device)
  std::string describe() const;          // e.g. "bf16[8, 4096] cuda"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::f32;
};

// Reads element i of a host buffer of `dtype` as float; writes likewise (RNE).
float load_float(const void* data, DType dtype, int64_t i);
void store_float(void* data, DType dtype, int64_t i, float value);

// Checks used at op boundaries: they name the op and what was expected.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_dtype(const Tensor& t, DType expected, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

// dst[:, dst_col + j] = src[:, src_col + j] for j < cols: a block of columns
// of one 2-D tensor (leading dims flattened, [R, C]) into a block of columns
// of another with the same rows and dtype, e.g. q, k and v out of a fused
// [R, (Hq + 2 Hkv) D] projection and back. Both on one device; CPU: a memcpy
// per row; CUDA: one cudaMemcpy2DAsync on current_stream() (no host sync).
void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t cols);

void device_synchronize();  // waits for the GPU (no-op without CUDA)

}  // namespace halo
