// The subset of the CUDA runtime and device built-ins that kernels/src uses, for the host
// C++ compiler: `make -C kernels cpu` compiles the same kernel sources into
// libtinyfaces_kernels_cpu.so, which runs every kernel on the CPU (grid.cpp: each CUDA
// thread is a fiber; blocks run a few at a time, interleaved at barriers and warp
// collectives). It checks the kernels' logic (indexing, workspace layout, the NMS walks and
// their waiting) on machines without a GPU. It says nothing about the GPU's memory model,
// scheduling, timing or device math (expf differs by ulps; nms.cu rounds every operation
// explicitly, so its float math is the same).
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// --- keywords ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A __shared__ declaration must have been rewritten to TF_CPU_SHARED(type, name) (the
// Makefile's sed does it): left as is, it fails to compile here.
#define __shared__ tf_cpu_shared_declaration_was_not_rewritten
#define TF_CPU_SHARED(type, name) \
  static char name##_tf_cpu_tag;  \
  type& name = ::tfcpu::block_shared<type>(&name##_tf_cpu_tag)
// The block's dynamic shared memory (the launch's dynamicSmemBytes; common.cuh defines this as
// `extern __shared__` for nvcc).
#define TF_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::tfcpu::dynamic_shared_bytes())

// --- vector types -----------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }

// --- built-in variables: set by the scheduler before it resumes a thread's fiber --------------
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// --- device functions -------------------------------------------------------------------------
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }

// Explicitly rounded float32 operations: the host build uses -ffp-contract=off (no FMA).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }

inline unsigned int __float_as_uint(float v) {
  unsigned int u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __ffs(unsigned int v) { return __builtin_ffs(static_cast<int>(v)); }

// Fibers of one launch run on one OS thread and switch only at barriers, so a plain
// read-modify-write is atomic here.
template <typename T, typename U>
T atomicAdd(T* address, U value) {
  const T old = *address;
  *address = static_cast<T>(old + value);
  return old;
}

void __syncthreads();
int __syncthreads_or(int predicate);
unsigned int __ballot_sync(unsigned int mask, int predicate);
// The lanes of `mask` whose `value` equals this lane's (a real warp collective here).
unsigned int __match_any_sync(unsigned int mask, unsigned int value);
template <typename T>
unsigned int __match_any_sync(unsigned int mask, T value) = delete;  // 32-bit values only here
void __syncwarp(unsigned int mask = 0xffffffffu);
unsigned int tf_cpu_shfl_u32(unsigned int mask, unsigned int value, int src_lane);
template <typename T>
T __shfl_sync(unsigned int mask, T value, int src_lane) {
  static_assert(sizeof(T) == 4, "the CPU build shuffles 32-bit values only");
  unsigned int bits;
  std::memcpy(&bits, &value, 4);
  bits = tf_cpu_shfl_u32(mask, bits, src_lane);
  std::memcpy(&value, &bits, 4);
  return value;
}

// --- runtime API ------------------------------------------------------------------------------
typedef struct CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
};

const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
// As the CUDA runtime: every failed call of this thread (a launch, a memset) becomes the
// thread's last error; cudaGetLastError returns and clears it, cudaPeekAtLastError only
// returns it (the CUB stand-in returns it after its work, as CUB does after its launches).
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);

enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
// cudaDevAttrMaxSharedMemoryPerBlockOptin: an A100's 166912 bytes, or $TF_CPU_SHARED_OPTIN_BYTES
// (232448: an H100's, to take the paths for one: NMS's one-block sorts).
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);

struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  void* attrs;
  unsigned int numAttrs;
};

namespace tfcpu {

// Runs `thread_body` once per thread of the grid (see grid.cpp); returns the launch's error.
cudaError_t run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                     const std::function<void()>& thread_body, size_t max_dynamic_shared = 0);

// This block's instance of the __shared__ variable identified by `tag` (0xFF-filled: garbage).
void* block_shared_bytes(const void* tag, size_t bytes);

// This block's dynamic shared memory (0xFF-filled: garbage).
void* dynamic_shared_bytes();

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) per kernel: launches of `kernel` may then
// take up to `bytes` of dynamic shared memory (48 KiB without it, as on a GPU).
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
size_t max_dynamic_shared(const void* kernel);

template <typename T>
T& block_shared(const void* tag) {
  static_assert(std::is_trivially_copyable<T>::value, "__shared__ variables are plain data");
  return *static_cast<T*>(block_shared_bytes(tag, sizeof(T)));
}

}  // namespace tfcpu

// Synchronous: the CPU build has no streams (every call runs to completion in order). A failed
// launch is this thread's last error (run_grid records it).
template <typename... Expected, typename... Actual>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(Expected...),
                               Actual&&... args) {
  std::tuple<std::decay_t<Expected>...> bound(std::forward<Actual>(args)...);
  return tfcpu::run_grid(config->gridDim, config->blockDim, config->dynamicSmemBytes,
                         [&] { std::apply(kernel, bound); },
                         tfcpu::max_dynamic_shared(reinterpret_cast<const void*>(kernel)));
}

template <typename... Expected>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Expected...), cudaFuncAttribute attr, int value) {
  return tfcpu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel),
                                       attr == cudaFuncAttributeMaxDynamicSharedMemorySize ? value : -1);
}
