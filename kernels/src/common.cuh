// Shared helpers of the kernel library: status reporting, alignment, kernel launch.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "tinyfaces_kernels.h"

// A kernel's dynamic shared memory (the CPU build's cuda_runtime.h defines its own).
#ifndef TF_DYNAMIC_SHARED
#define TF_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace tf {

constexpr size_t kAlign = 256;  // every sub-buffer of a workspace starts on this boundary

inline size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

inline bool aligned(const void* p, size_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

inline bool finite(float v) { return std::isfinite(v); }

// Records a detail message for tf_last_error_message() and returns `status`.
tf_status fail(tf_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Records a failed CUDA call (code + "what: cudaGetErrorString") and returns CUDA_ERROR.
tf_status cuda_fail(cudaError_t err, const char* what);

// Clears this thread's error details; every public entry point starts with it.
void clear_error();

inline tf_status check_cuda(cudaError_t err, const char* what) {
  return err == cudaSuccess ? TF_STATUS_SUCCESS : cuda_fail(err, what);
}

// Clears the last error of the library's CUDA runtime (linked statically and private: a
// caller's own CUDA errors never reach it). An earlier failed call of this thread (say a bad
// pointer passed to tf_candidates_reset) leaves its error there, and CUB's launches return
// cudaPeekAtLastError(): every later tf_nms would fail with that stale error. So each public
// entry point that enqueues work calls this after its argument checks, before its first CUDA
// call. A sticky error (a kernel fault) is not cleared and fails the next call, as it must.
inline void clear_stale_cuda_error() { (void)cudaGetLastError(); }

// Launches `kernel` and returns the launch's own error code (cudaLaunchKernelEx), never the
// runtime's last error: an earlier error is not reported here (see clear_stale_cuda_error).
template <typename... KernelArgs, typename... Args>
tf_status launch(const char* what, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                 size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  return check_cuda(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), what);
}

inline unsigned int blocks_for(int64_t items, int threads) {
  return static_cast<unsigned int>((items + threads - 1) / threads);
}

}  // namespace tf

#define TF_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    tf_status tf_status_ = (expr);               \
    if (tf_status_ != TF_STATUS_SUCCESS) return tf_status_; \
  } while (0)
