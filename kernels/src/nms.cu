// Sort + bitmask NMS over the candidate buffer, reduced and compacted on the device.
#include <cub/device/device_radix_sort.cuh>

#include "candidates.cuh"

namespace {

constexpr int kWordBits = 64;         // boxes per mask word
constexpr int kPrepareThreads = 256;
constexpr int kMaskThreads = 64;      // one mask word per thread and tile
constexpr int kMaxMaskBlocks = 4096;  // the mask kernel strides over the tiles
constexpr int kReduceThreads = 256;

struct Control {
  uint32_t n;  // candidates that go through sort + NMS (0 on overflow)
};

struct NmsConfig {
  float thresh;
  float offset;
  int clip;
  float max_x;  // image_width - 1
  float max_y;  // image_height - 1
};

inline size_t words_for(int64_t n) { return static_cast<size_t>((n + kWordBits - 1) / kWordBits); }

// CUB onesweep radix sort with double buffers needs bins + lookback (< 4 bytes per item with
// tiles of >= 256 items) + counters; the bound is checked against CUB's own query at launch.
inline size_t sort_temp_bound(int64_t m) { return tf::align_up(8 * static_cast<size_t>(m)) + (1u << 20); }

struct NmsLayout {
  size_t control, keys_a, keys_b, slots_a, slots_b, boxes, logits, mask, sort_temp, total;
};

NmsLayout nms_layout(int64_t m) {
  const size_t n = static_cast<size_t>(m);
  NmsLayout l;
  l.control = 0;
  l.keys_a = l.control + tf::align_up(sizeof(Control));
  l.keys_b = l.keys_a + tf::align_up(n * sizeof(unsigned long long));
  l.slots_a = l.keys_b + tf::align_up(n * sizeof(unsigned long long));
  l.slots_b = l.slots_a + tf::align_up(n * sizeof(uint32_t));
  l.boxes = l.slots_b + tf::align_up(n * sizeof(uint32_t));
  l.logits = l.boxes + tf::align_up(n * sizeof(float4));
  l.mask = l.logits + tf::align_up(n * sizeof(float));
  l.sort_temp = l.mask + tf::align_up(n * words_for(m) * sizeof(unsigned long long));
  l.total = l.sort_temp + sort_temp_bound(m);
  return l;
}

// Reads the true count, flags overflow, and pads the sort input to m items.
__global__ void nms_prepare_kernel(const uint32_t* __restrict__ count,
                                   const unsigned long long* __restrict__ cand_keys,
                                   uint32_t capacity, uint32_t m, unsigned long long* keys,
                                   uint32_t* slots, Control* ctrl, tf_nms_stats* stats) {
  const uint32_t total = *count;
  const uint32_t overflow =
      (total > capacity ? TF_OVERFLOW_CAPACITY : 0u) | (total > m ? TF_OVERFLOW_NMS : 0u);
  const uint32_t n = overflow ? 0u : total;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < m; i += gridDim.x * blockDim.x) {
    keys[i] = i < n ? cand_keys[i] : tf::kSentinelKey;
    slots[i] = i;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    ctrl->n = n;
    stats->num_kept = 0;
    stats->num_candidates = total;
    stats->overflow = overflow;
    stats->reserved = 0;
  }
}

// Boxes and logits in sorted order.
__global__ void nms_gather_kernel(const Control* __restrict__ ctrl,
                                  const unsigned long long* __restrict__ sorted_keys,
                                  const uint32_t* __restrict__ sorted_slots,
                                  const float4* __restrict__ cand_boxes, float4* boxes,
                                  float* logits) {
  const uint32_t n = ctrl->n;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    boxes[i] = cand_boxes[sorted_slots[i]];
    logits[i] = tf::logit_of(sorted_keys[i]);
  }
}

__device__ __forceinline__ float box_area(float4 b, float o) {
  return (b.z - b.x + o) * (b.w - b.y + o);
}

__device__ __forceinline__ bool overlaps(float4 a, float area_a, float4 b, const NmsConfig& cfg) {
  const float iw = fmaxf(0.0f, fminf(a.z, b.z) - fmaxf(a.x, b.x) + cfg.offset);
  const float ih = fmaxf(0.0f, fminf(a.w, b.w) - fmaxf(a.y, b.y) + cfg.offset);
  const float inter = iw * ih;
  return inter / (area_a + box_area(b, cfg.offset) - inter) > cfg.thresh;  // NaN: false
}

// mask[i * words + col] bit j: box i suppresses box col*64 + j (only j > i is ever set).
// Tiles (row block, column block) of the upper triangle, strided over a fixed grid.
__global__ void __launch_bounds__(kMaskThreads)
    nms_mask_kernel(const Control* __restrict__ ctrl, const float4* __restrict__ boxes,
                    const NmsConfig cfg, unsigned long long* __restrict__ mask) {
  __shared__ float4 cols[kMaskThreads];
  const uint32_t n = ctrl->n;
  const uint32_t words = (n + kWordBits - 1) / kWordBits;
  const uint64_t tiles = static_cast<uint64_t>(words) * words;
  for (uint64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const uint32_t row = static_cast<uint32_t>(t / words), col = static_cast<uint32_t>(t % words);
    if (row > col) continue;  // uniform per block
    const uint32_t col_start = col * kWordBits;
    const uint32_t col_n = min(static_cast<uint32_t>(kWordBits), n - col_start);
    __syncthreads();  // the previous tile's readers are done with cols
    if (threadIdx.x < col_n) cols[threadIdx.x] = boxes[col_start + threadIdx.x];
    __syncthreads();
    const uint32_t i = row * kWordBits + threadIdx.x;
    if (i < n) {
      const float4 a = boxes[i];
      const float area_a = box_area(a, cfg.offset);
      unsigned long long bits = 0;
      for (uint32_t j = (row == col) ? threadIdx.x + 1 : 0; j < col_n; ++j)
        if (overlaps(a, area_a, cols[j], cfg)) bits |= 1ull << j;
      mask[static_cast<size_t>(i) * words + col] = bits;
    }
  }
}

// Greedy pass over the mask in one block, 64 boxes at a time: thread 0 resolves a word's
// boxes in order from the diagonal word, then all threads OR the kept rows into the
// "removed" bitset and write the kept boxes (clipped, sigmoid of the logit) compacted.
__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(const Control* __restrict__ ctrl, const unsigned long long* __restrict__ mask,
                      const float4* __restrict__ boxes, const float* __restrict__ logits,
                      const NmsConfig cfg, float* __restrict__ out, tf_nms_stats* stats) {
  extern __shared__ unsigned long long removed[];
  __shared__ unsigned long long diag[kWordBits];
  __shared__ unsigned long long keep_word;
  const uint32_t tid = threadIdx.x;
  const uint32_t n = ctrl->n;
  const uint32_t words = (n + kWordBits - 1) / kWordBits;
  for (uint32_t w = tid; w < words; w += blockDim.x) removed[w] = 0;
  __syncthreads();

  uint32_t kept = 0;
  for (uint32_t b = 0; b < words; ++b) {
    const uint32_t first = b * kWordBits;
    const uint32_t rows = min(static_cast<uint32_t>(kWordBits), n - first);
    const unsigned long long valid = rows == kWordBits ? ~0ull : (1ull << rows) - 1;
    if ((removed[b] & valid) == valid) continue;  // all suppressed; uniform per block
    if (tid < rows) diag[tid] = mask[static_cast<size_t>(first + tid) * words + b];
    __syncthreads();
    if (tid == 0) {
      unsigned long long r = removed[b], keep = 0;
      for (uint32_t k = 0; k < rows; ++k) {
        if (!((r >> k) & 1ull)) {
          keep |= 1ull << k;
          r |= diag[k];
        }
      }
      keep_word = keep;
    }
    __syncthreads();
    const unsigned long long keep = keep_word;
    for (uint32_t j = b + 1 + tid; j < words; j += blockDim.x) {
      unsigned long long acc = removed[j];
      for (unsigned long long k = keep; k; k &= k - 1)
        acc |= mask[static_cast<size_t>(first + __ffsll(static_cast<long long>(k)) - 1) * words + j];
      removed[j] = acc;
    }
    if (tid < rows && ((keep >> tid) & 1ull)) {
      float4 box = boxes[first + tid];
      if (cfg.clip) {
        box.x = fminf(fmaxf(box.x, 0.0f), cfg.max_x);
        box.y = fminf(fmaxf(box.y, 0.0f), cfg.max_y);
        box.z = fminf(fmaxf(box.z, 0.0f), cfg.max_x);
        box.w = fminf(fmaxf(box.w, 0.0f), cfg.max_y);
      }
      float* row = out + 5 * static_cast<size_t>(kept + __popcll(keep & ((1ull << tid) - 1)));
      row[0] = box.x;
      row[1] = box.y;
      row[2] = box.z;
      row[3] = box.w;
      row[4] = 1.0f / (1.0f + expf(-logits[first + tid]));
    }
    kept += __popcll(keep);
    __syncthreads();
  }
  if (tid == 0) stats->num_kept = kept;
}

tf_status check_nms_args(const void* candidates, int64_t capacity, const tf_nms_params* params,
                         int64_t max_candidates, const void* workspace, const float* out_boxes,
                         const tf_nms_stats* out_stats) {
  if (candidates == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "candidates is NULL");
  if (params == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "params is NULL");
  if (workspace == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "workspace is NULL");
  if (out_boxes == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "out_boxes is NULL");
  if (out_stats == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "out_stats is NULL");
  TF_RETURN_IF_ERROR(tf::check_capacity(capacity));
  if (max_candidates < 1 || max_candidates > TF_MAX_NMS_CANDIDATES)
    return tf::fail(TF_STATUS_INVALID_CAPACITY, "max_candidates = %lld is outside [1, %d]",
                    static_cast<long long>(max_candidates), TF_MAX_NMS_CANDIDATES);
  const tf_nms_params& p = *params;
  if (!(p.nms_thresh >= 0.0f && p.nms_thresh <= 1.0f))
    return tf::fail(TF_STATUS_INVALID_VALUE, "nms_thresh = %g is outside [0, 1]", p.nms_thresh);
  if (!(tf::finite(p.pixel_offset) && p.pixel_offset >= 0.0f))
    return tf::fail(TF_STATUS_INVALID_VALUE, "pixel_offset = %g must be finite and >= 0",
                    p.pixel_offset);
  if (p.image_height < 1 || p.image_width < 1)
    return tf::fail(TF_STATUS_INVALID_SIZE, "image size %dx%d must be >= 1", p.image_height,
                    p.image_width);
  if (!tf::aligned(candidates, 16))
    return tf::fail(TF_STATUS_MISALIGNED, "candidates is not 16-byte aligned");
  if (!tf::aligned(workspace, 16))
    return tf::fail(TF_STATUS_MISALIGNED, "workspace is not 16-byte aligned");
  if (!tf::aligned(out_boxes, 4))
    return tf::fail(TF_STATUS_MISALIGNED, "out_boxes is not 4-byte aligned");
  if (!tf::aligned(out_stats, 4))
    return tf::fail(TF_STATUS_MISALIGNED, "out_stats is not 4-byte aligned");
  return TF_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

TF_API tf_status tf_nms_workspace_size(int64_t max_candidates, size_t* bytes) {
  tf::clear_error();
  if (bytes == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "bytes is NULL");
  if (max_candidates < 1 || max_candidates > TF_MAX_NMS_CANDIDATES)
    return tf::fail(TF_STATUS_INVALID_CAPACITY, "max_candidates = %lld is outside [1, %d]",
                    static_cast<long long>(max_candidates), TF_MAX_NMS_CANDIDATES);
  *bytes = nms_layout(max_candidates).total;
  return TF_STATUS_SUCCESS;
}

TF_API tf_status tf_nms(const void* candidates, int64_t capacity, const tf_nms_params* params,
                        int64_t max_candidates, void* workspace, size_t workspace_bytes,
                        float* out_boxes, tf_nms_stats* out_stats, tf_stream_t stream) {
  tf::clear_error();
  TF_RETURN_IF_ERROR(check_nms_args(candidates, capacity, params, max_candidates, workspace,
                                    out_boxes, out_stats));
  const NmsLayout layout = nms_layout(max_candidates);
  if (workspace_bytes < layout.total)
    return tf::fail(TF_STATUS_WORKSPACE_TOO_SMALL, "workspace_bytes = %zu, need %zu",
                    workspace_bytes, layout.total);

  const cudaStream_t s = stream;
  const uint32_t m = static_cast<uint32_t>(max_candidates);
  const tf::CandidateView cand = tf::candidate_view(const_cast<void*>(candidates), capacity);
  char* base = static_cast<char*>(workspace);
  Control* ctrl = reinterpret_cast<Control*>(base + layout.control);
  cub::DoubleBuffer<unsigned long long> keys(reinterpret_cast<unsigned long long*>(base + layout.keys_a),
                                             reinterpret_cast<unsigned long long*>(base + layout.keys_b));
  cub::DoubleBuffer<uint32_t> slots(reinterpret_cast<uint32_t*>(base + layout.slots_a),
                                    reinterpret_cast<uint32_t*>(base + layout.slots_b));
  float4* boxes = reinterpret_cast<float4*>(base + layout.boxes);
  float* logits = reinterpret_cast<float*>(base + layout.logits);
  unsigned long long* mask = reinterpret_cast<unsigned long long*>(base + layout.mask);
  void* sort_temp = base + layout.sort_temp;
  const NmsConfig cfg{params->nms_thresh, params->pixel_offset, params->clip != 0,
                      static_cast<float>(params->image_width - 1),
                      static_cast<float>(params->image_height - 1)};
  const unsigned int item_blocks = tf::blocks_for(m, kPrepareThreads);
  const size_t words = words_for(m);

  TF_RETURN_IF_ERROR(tf::launch("nms prepare kernel launch", nms_prepare_kernel, dim3(item_blocks),
                                dim3(kPrepareThreads), 0, s, static_cast<const uint32_t*>(cand.count),
                                static_cast<const unsigned long long*>(cand.keys),
                                static_cast<uint32_t>(capacity),
                                m, keys.Current(), slots.Current(), ctrl, out_stats));
  size_t sort_bytes = 0;
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, slots, static_cast<int>(m), 0, 64, s),
      "cub::DeviceRadixSort::SortPairs (size query)"));
  if (sort_bytes > sort_temp_bound(max_candidates))
    return tf::fail(TF_STATUS_WORKSPACE_TOO_SMALL,
                    "internal: CUB needs %zu bytes of sort storage, the workspace reserves %zu",
                    sort_bytes, sort_temp_bound(max_candidates));
  sort_bytes = sort_temp_bound(max_candidates);
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, keys, slots, static_cast<int>(m), 0, 64, s),
      "cub::DeviceRadixSort::SortPairs"));
  TF_RETURN_IF_ERROR(tf::launch("nms gather kernel launch", nms_gather_kernel, dim3(item_blocks),
                                dim3(kPrepareThreads), 0, s, static_cast<const Control*>(ctrl),
                                static_cast<const unsigned long long*>(keys.Current()),
                                static_cast<const uint32_t*>(slots.Current()),
                                static_cast<const float4*>(cand.boxes), boxes, logits));
  const unsigned int mask_blocks =
      static_cast<unsigned int>(words * words < kMaxMaskBlocks ? words * words : kMaxMaskBlocks);
  TF_RETURN_IF_ERROR(tf::launch("nms mask kernel launch", nms_mask_kernel, dim3(mask_blocks), dim3(kMaskThreads),
                                0, s, static_cast<const Control*>(ctrl),
                                static_cast<const float4*>(boxes), cfg, mask));
  return tf::launch("nms reduce kernel launch", nms_reduce_kernel, dim3(1), dim3(kReduceThreads),
                    words * sizeof(unsigned long long), s, static_cast<const Control*>(ctrl),
                    static_cast<const unsigned long long*>(mask), static_cast<const float4*>(boxes),
                    static_cast<const float*>(logits), cfg, out_boxes, out_stats);
}

}  // extern "C"
