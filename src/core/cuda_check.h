// CUDA and cuBLAS status checks that name the failing call and its site.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                  \
  do {                                                                                    \
    cudaError_t status_ = (call);                                                         \
    if (status_ != cudaSuccess)                                                           \
      ::halo::fail_at(__FILE__, __LINE__, "CUDA error ", static_cast<int>(status_), " (", \
                      cudaGetErrorName(status_), ": ", cudaGetErrorString(status_),       \
                      ") in ", #call);                                                    \
  } while (0)

// After a kernel launch: reports a bad launch configuration at its site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                                      \
  do {                                                                                          \
    cublasStatus_t status_ = (call);                                                            \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::halo::fail_at(__FILE__, __LINE__, "cuBLAS error ", static_cast<int>(status_), " (",     \
                      cublasLtGetStatusName(status_), ": ", cublasLtGetStatusString(status_), \
                      ") in ", #call);                                                          \
  } while (0)
