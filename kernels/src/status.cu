// Status strings, per-thread error details, ABI check, device count.
#include <cstdarg>
#include <cstdio>

#include "common.cuh"

namespace {

struct ErrorState {
  int cuda_error = 0;
  char message[512] = {0};
};

thread_local ErrorState g_error;

}  // namespace

namespace tf {

tf_status fail(tf_status status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_error.message, sizeof g_error.message, fmt, args);
  va_end(args);
  return status;
}

tf_status cuda_fail(cudaError_t err, const char* what) {
  g_error.cuda_error = static_cast<int>(err);
  return fail(TF_STATUS_CUDA_ERROR, "%s: %s (%s)", what, cudaGetErrorString(err),
              cudaGetErrorName(err));
}

void clear_error() {
  g_error.cuda_error = 0;
  g_error.message[0] = '\0';
}

}  // namespace tf

extern "C" {

TINYFACES_API const char* tf_status_string(tf_status status) {
  switch (status) {
    case TF_STATUS_SUCCESS: return "success";
    case TF_STATUS_NULL_POINTER: return "a required pointer argument is NULL";
    case TF_STATUS_INVALID_SIZE: return "a size is out of range";
    case TF_STATUS_INVALID_CAPACITY: return "a capacity is out of range";
    case TF_STATUS_INVALID_VALUE: return "a parameter value is invalid";
    case TF_STATUS_MISALIGNED: return "a buffer is misaligned";
    case TF_STATUS_WORKSPACE_TOO_SMALL: return "the workspace is too small";
    case TF_STATUS_ABI_MISMATCH: return "ABI mismatch between caller and library";
    case TF_STATUS_CUDA_ERROR: return "a CUDA runtime call failed";
  }
  return "unknown tf_status";
}

TINYFACES_API int tf_last_cuda_error(void) { return g_error.cuda_error; }

TINYFACES_API const char* tf_last_error_message(void) { return g_error.message; }

TINYFACES_API uint32_t tf_abi_version(void) { return TF_KERNELS_ABI_VERSION; }

TINYFACES_API tf_status tf_check_abi(uint32_t abi_version, size_t sizeof_decode_params,
                                     size_t sizeof_nms_params, size_t sizeof_nms_stats) {
  tf::clear_error();
  if (abi_version != TF_KERNELS_ABI_VERSION || sizeof_decode_params != sizeof(tf_decode_params) ||
      sizeof_nms_params != sizeof(tf_nms_params) || sizeof_nms_stats != sizeof(tf_nms_stats)) {
    return tf::fail(TF_STATUS_ABI_MISMATCH,
                    "caller: ABI %u, structs %zu/%zu/%zu bytes; library: ABI %u, %zu/%zu/%zu",
                    abi_version, sizeof_decode_params, sizeof_nms_params, sizeof_nms_stats,
                    TF_KERNELS_ABI_VERSION, sizeof(tf_decode_params), sizeof(tf_nms_params),
                    sizeof(tf_nms_stats));
  }
  return TF_STATUS_SUCCESS;
}

TINYFACES_API tf_status tf_get_device_count(int* count) {
  tf::clear_error();
  if (count == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "count is NULL");
  *count = 0;
  return tf::check_cuda(cudaGetDeviceCount(count), "cudaGetDeviceCount");
}

}  // extern "C"
