// Decode one pyramid level's score map into the shared candidate buffer.
#include "candidates.cuh"

namespace {

constexpr int kDecodeThreads = 256;

constexpr unsigned kFullWarp = 0xffffffffu;

// Adds a warp's count of non-finite values (one lane calls it), unless the counter has
// reached kNonfiniteSaturation.
__device__ __forceinline__ void add_nonfinite(uint32_t* counter, uint32_t n) {
  if (*static_cast<volatile uint32_t*>(counter) < tf::kNonfiniteSaturation) atomicAdd(counter, n);
}

// Grid: x over the h*w cells, y over the 25 templates. Thread (cell, c) checks the five values
// it owns (cls c and the regressions 25+c, 50+c, 75+c, 100+c) for NaN / inf in every block, so
// the counter covers all 125 channels; only blocks of active templates make candidates.
__global__ void decode_level_kernel(const float* __restrict__ scores, int h, int w,
                                    const tf_decode_params p, uint32_t key_base,
                                    tf::CandidateView out, uint32_t capacity) {
  const int c = blockIdx.y;
  const bool active = (p.active_mask >> c) & 1u;  // uniform per block
  const uint32_t hw = static_cast<uint32_t>(h) * static_cast<uint32_t>(w);
  const uint32_t cell = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;

  bool keep = false;
  uint32_t bad = 0;  // non-finite values among this thread's five
  float logit = 0.0f;
  float4 box;
  if (cell < hw) {
    const size_t plane = static_cast<size_t>(TF_NUM_TEMPLATES) * hw;
    const float* v = scores + static_cast<size_t>(c) * hw + cell;
    logit = v[0];
    const float tx = v[plane], ty = v[2 * plane], tw = v[3 * plane], th = v[4 * plane];
    bad = !isfinite(logit) + !isfinite(tx) + !isfinite(ty) + !isfinite(tw) + !isfinite(th);
    keep = active && logit > p.logit_thresh;  // NaN never passes
    if (keep) {
      const int y = cell / w, x = cell - y * w;
      const float* t = p.templates[c];
      const float cw = t[2] - t[0] + 1.0f, ch = t[3] - t[1] + 1.0f;
      const float rcx = (x * p.stride + p.offset) + cw * tx;
      const float rcy = (y * p.stride + p.offset) + ch * ty;
      const float rcw = cw * expf(tw), rch = ch * expf(th);
      box = make_float4((rcx - rcw / 2) / p.scale, (rcy - rch / 2) / p.scale,
                        (rcx + rcw / 2) / p.scale, (rcy + rch / 2) / p.scale);
      keep = isfinite(box.x) && isfinite(box.y) && isfinite(box.z) && isfinite(box.w);
    }
  }

  // Rare path (warp-uniform): the warp's count (bad <= 5: three bit ballots), one atomic.
  const unsigned any_bad = __ballot_sync(kFullWarp, bad != 0);
  if (any_bad != 0) {
    const uint32_t n = __popc(__ballot_sync(kFullWarp, bad & 1u)) +
                       2 * __popc(__ballot_sync(kFullWarp, bad & 2u)) +
                       4 * __popc(__ballot_sync(kFullWarp, bad & 4u));
    if (lane == __ffs(any_bad) - 1) add_nonfinite(out.nonfinite, n);
  }

  // One atomic per warp; the slot order does not matter (the keys decide every order).
  const unsigned lanes = __ballot_sync(kFullWarp, keep);
  if (lanes == 0) return;
  const int leader = __ffs(lanes) - 1;
  uint32_t first = 0;
  if (lane == leader) first = atomicAdd(out.count, static_cast<uint32_t>(__popc(lanes)));
  first = __shfl_sync(kFullWarp, first, leader);
  if (!keep) return;
  const uint32_t slot = first + __popc(lanes & ((1u << lane) - 1u));
  if (slot >= capacity) return;  // still counted: tf_nms reports the overflow
  out.keys[slot] = tf::sort_key(logit, key_base + static_cast<uint32_t>(c) * hw + cell);
  out.boxes[slot] = box;
}

tf_status check_params(const tf_decode_params& p) {
  if (p.active_mask >> TF_NUM_TEMPLATES)
    return tf::fail(TF_STATUS_INVALID_VALUE, "active_mask 0x%x has bits above template %d",
                    p.active_mask, TF_NUM_TEMPLATES - 1);
  if (std::isnan(p.logit_thresh))
    return tf::fail(TF_STATUS_INVALID_VALUE, "logit_thresh is NaN");
  if (!(tf::finite(p.stride) && p.stride > 0.0f))
    return tf::fail(TF_STATUS_INVALID_VALUE, "stride = %g must be finite and > 0", p.stride);
  if (!tf::finite(p.offset))
    return tf::fail(TF_STATUS_INVALID_VALUE, "offset = %g is not finite", p.offset);
  if (!(tf::finite(p.scale) && p.scale > 0.0f))
    return tf::fail(TF_STATUS_INVALID_VALUE, "scale = %g must be finite and > 0", p.scale);
  for (int c = 0; c < TF_NUM_TEMPLATES; ++c)
    for (int k = 0; k < 4; ++k)
      if (!tf::finite(p.templates[c][k]))
        return tf::fail(TF_STATUS_INVALID_VALUE, "templates[%d][%d] is not finite", c, k);
  return TF_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

TINYFACES_API tf_status tf_candidates_size(int64_t capacity, size_t* bytes) {
  tf::clear_error();
  if (bytes == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "bytes is NULL");
  TF_RETURN_IF_ERROR(tf::check_capacity(capacity));
  *bytes = tf::candidates_bytes(capacity);
  return TF_STATUS_SUCCESS;
}

TINYFACES_API tf_status tf_candidates_reset(void* candidates, tf_stream_t stream) {
  tf::clear_error();
  if (candidates == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "candidates is NULL");
  if (!tf::aligned(candidates, 16))
    return tf::fail(TF_STATUS_MISALIGNED, "candidates is not 16-byte aligned");
  tf::clear_stale_cuda_error();
  return tf::check_cuda(cudaMemsetAsync(candidates, 0, 2 * sizeof(uint32_t), stream),
                        "cudaMemsetAsync(candidate counters)");
}

TINYFACES_API tf_status tf_decode_level(const float* score_map, int height, int width,
                                        const tf_decode_params* params, int64_t key_base,
                                        void* candidates, int64_t capacity, tf_stream_t stream) {
  tf::clear_error();
  if (score_map == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "score_map is NULL");
  if (params == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "params is NULL");
  if (candidates == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "candidates is NULL");
  if (height < 1 || height > TF_MAX_DIM)
    return tf::fail(TF_STATUS_INVALID_SIZE, "height = %d is outside [1, %d]", height, TF_MAX_DIM);
  if (width < 1 || width > TF_MAX_DIM)
    return tf::fail(TF_STATUS_INVALID_SIZE, "width = %d is outside [1, %d]", width, TF_MAX_DIM);
  const int64_t keys = static_cast<int64_t>(TF_NUM_TEMPLATES) * height * width;
  if (key_base < 0)
    return tf::fail(TF_STATUS_INVALID_SIZE, "key_base = %lld is negative",
                    static_cast<long long>(key_base));
  // key_base > UINT32_MAX - keys, not key_base + keys > UINT32_MAX: no signed overflow for a
  // key_base near INT64_MAX
  if (key_base > static_cast<int64_t>(UINT32_MAX) - keys)
    return tf::fail(TF_STATUS_INVALID_SIZE,
                    "key_base = %lld plus this level's 25*height*width = %lld keys passes the "
                    "32-bit key space (2^32 - 1)",
                    static_cast<long long>(key_base), static_cast<long long>(keys));
  TF_RETURN_IF_ERROR(tf::check_capacity(capacity));
  TF_RETURN_IF_ERROR(check_params(*params));
  if (!tf::aligned(score_map, 4))
    return tf::fail(TF_STATUS_MISALIGNED, "score_map is not 4-byte aligned");
  if (!tf::aligned(candidates, 16))
    return tf::fail(TF_STATUS_MISALIGNED, "candidates is not 16-byte aligned");

  const int64_t cells = static_cast<int64_t>(height) * width;
  tf::clear_stale_cuda_error();
  return tf::launch("decode kernel launch", decode_level_kernel,
                    dim3(tf::blocks_for(cells, kDecodeThreads), TF_NUM_TEMPLATES),
                    dim3(kDecodeThreads), 0, stream, score_map, height, width, *params,
                    static_cast<uint32_t>(key_base), tf::candidate_view(candidates, capacity),
                    static_cast<uint32_t>(capacity));
}

}  // extern "C"
