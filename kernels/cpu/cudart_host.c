/*
 * cudart_host.c -- the CUDA runtime calls of examples/decode_nms_demo.c, carried out on host
 * memory, so that the C example runs over the CPU build (libtinyfaces_kernels_cpu.so, whose
 * "device" memory is host memory) on a machine without a GPU:
 *
 *   make -C kernels cpu-example && kernels/build/decode_nms_demo_cpu
 *
 * Only what the example calls: cudaMalloc / cudaFree (256-byte aligned host memory),
 * cudaStreamCreate / cudaStreamDestroy / cudaStreamSynchronize, cudaMemcpy(Async) (a memcpy:
 * the CPU build runs each launch to its end before returning, so work is done in call order),
 * cudaGetErrorString. It also defines tf_get_device_count, answering 1 device (the CPU
 * library's own answers 0, and the example stops there): a program's definition takes the
 * place of the library's.
 *
 * For tests of the example's error paths: $TF_CPU_FAIL_MALLOC=N fails the N-th cudaMalloc
 * (cudaErrorMemoryAllocation), $TF_CPU_FAIL_SYNC (set) every cudaStreamSynchronize
 * (cudaErrorLaunchFailure).
 *
 * C11 (aligned_alloc); needs the CUDA toolkit's cuda_runtime_api.h for the types only.
 */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "tinyfaces_kernels.h"

static int mallocs;

cudaError_t cudaMalloc(void** p, size_t n) {
  const char* fail = getenv("TF_CPU_FAIL_MALLOC");
  if (fail && atoi(fail) == ++mallocs) return cudaErrorMemoryAllocation;
  if (n > (size_t)-1 - 255) return cudaErrorMemoryAllocation; /* rounding up would wrap */
  *p = aligned_alloc(256, (n + 255) / 256 * 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void* p) {
  free(p);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = (cudaStream_t)malloc(8); /* a distinct non-NULL handle */
  return *s ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  free(s);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return getenv("TF_CPU_FAIL_SYNC") ? cudaErrorLaunchFailure : cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, enum cudaMemcpyKind kind,
                            cudaStream_t s) {
  (void)kind;
  (void)s;
  memcpy(dst, src, n);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, enum cudaMemcpyKind kind) {
  (void)kind;
  memcpy(dst, src, n);
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "cudart_host.c: failure";
}

tf_status tf_get_device_count(int* count) {
  if (!count) return TF_STATUS_NULL_POINTER;
  *count = 1;
  return TF_STATUS_SUCCESS;
}
