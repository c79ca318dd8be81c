// Sort + uncapped NMS over the candidate buffer: a spatial grid finds the overlap pairs and a
// single persistent kernel resolves greedy NMS exactly, without any N^2 structure.
//
// Pipeline (all on the caller's stream, no host synchronisation, no allocation):
//   1. prepare  : read the device-side count, flag overflow, pad the sort input to m items
//   2. sort     : radix sort of (logit, canonical key) -> NMS order: one block in shared memory
//                 when m <= kBlockSortMax and the GPU allows it (block_sort.cuh), else CUB's
//   3. gather   : boxes + logits in NMS order (index = rank)
//   4. bin      : a 32-bit cell code per box: size class k (floor log2 of max(w, h), so the box
//                 is smaller than 2^(k+1)) + grid cell of (x1, y1), cells 2^(k-1) wide and 2^k
//                 high; reset the statuses
//   5. sort     : radix sort of (cell code, rank) pairs (as step 2), stable -> within a cell by rank;
//                 then the boxes are gathered in that order, so that the walks stream them
//   6. resolve  : one thread per box; blocks claim chunks of 128 ranks in order (atomic ticket)
//                 and each thread walks its box's candidate suppressors (the size classes and
//                 the (x1, y1) windows an IoU > t partner can have) in cell-sorted order:
//                   - a SUPPRESSED candidate or one with IoU <= t is skipped for good,
//                   - an overlapping KEPT one suppresses the box,
//                   - an overlapping UNDECIDED one makes the thread wait (it retries later),
//                   - the end of the walk keeps the box.
//                 The lookahead rule (tf_nms_params.lookahead = 1) walks on past UNDECIDED
//                 ones for a KEPT one and, if there is none, waits on the first UNDECIDED one.
//                 The warp rule (lookahead = 2, nms_resolve_warp_kernel) gives each box a warp
//                 that reads its walk 32 candidates at a time.
//                 A box only depends on earlier ranks, whose chunks were claimed by blocks that
//                 are already running, so the lowest undecided box can always decide: no
//                 deadlock, and the result is exactly serial greedy NMS.
//   7. scan     : CUB exclusive sum of the kept flags -> output rows
//   8. write    : clip, sigmoid (or the logit itself: score_logit), compacted rows in NMS
//                 order; num_kept (a kept box outside the image with drop_outside is not
//                 flagged for step 7 by step 6, so neither written nor counted)
// kernels/nms_emulation.py is a step-by-step numpy emulation of steps 2-7 (same float32 math).
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "block_sort.cuh"
#include "candidates.cuh"

namespace {

constexpr int kPrepareThreads = 256;
constexpr int kResolveThreads = 128;     // = boxes per chunk
constexpr int kMaxResolveBlocks = 4096;  // persistent blocks claim chunks until none is left

// Cell code layout (uint32): class << 27 | ycode << 14 | xcode.
constexpr int kXBits = 14, kYBits = 13, kClassShift = 27;
// Codes cover [-1/8, 7/8) of their range in cells (images lie at positive coordinates): class 0
// spans x in [-1024, 7168) px, class 1 [-2048, 14336); outside, cells clamp (still exact).
constexpr int kXBias = 1 << (kXBits - 3), kYBias = 1 << (kYBits - 3);
constexpr int kTopClass = 30;                // max(w, h) >= 2^30 (and one single cell)
constexpr uint32_t kIsolatedCell = ~0u;      // boxes that can never have IoU > t: class 31
constexpr float kWindowMargin = 0.999f;      // slack on the size-ratio bound (float rounding)
constexpr float kPositionMargin = 1.0f / 65536.0f;  // relative slack on the position windows
constexpr int kXGrain = 2, kYGrain = 1;      // cell side 2^(k+1-grain): 1/4 (x), 1/2 (y) of 2^(k+1)

constexpr uint8_t kUndecided = 0, kKept = 1, kSuppressed = 2;

struct Control {
  uint32_t n;           // candidates that go through sort + NMS (0 on overflow)
  uint32_t next_chunk;  // ticket of the resolve kernel
};

struct NmsConfig {
  float thresh;
  float offset;
  int clip;
  int score_logit;   // row[4] is the logit (1) or sigmoid(logit) (0)
  int drop_outside;  // kept boxes entirely outside [base, max_x] x [base, max_y] not written
  float base;        // pixel_base: the first pixel's coordinate
  float max_x;       // base + image_width - 1 (exact: integers below 2^24)
  float max_y;       // base + image_height - 1
};

// CUB onesweep radix sort with double buffers needs bins + lookback (< 4 bytes per item with
// tiles of >= 256 items) + counters; the bound is checked against CUB's own queries (both sorts
// and the scan) at launch.
inline size_t sort_temp_bound(int64_t m) { return tf::align_up(8 * static_cast<size_t>(m)) + (1u << 20); }

// Sub-buffers. The second sort, the flags and the output positions reuse the first sort's
// buffers, which are free once the gather kernel has run.
struct NmsLayout {
  size_t control, keys_a, keys_b, slots_a, slots_b, boxes, logits, status, cell_boxes, sort_temp,
      total;
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
  l.status = l.logits + tf::align_up(n * sizeof(float));
  l.cell_boxes = l.status + tf::align_up(n * sizeof(uint8_t));
  l.sort_temp = l.cell_boxes + tf::align_up(n * sizeof(float4));
  l.total = l.sort_temp + sort_temp_bound(m);
  return l;
}

// --- geometry (every operation rounded explicitly: no FMA contraction, as in the emulation) ---

__device__ __forceinline__ float box_w(float4 b, float o) { return __fadd_rn(__fsub_rn(b.z, b.x), o); }
__device__ __forceinline__ float box_h(float4 b, float o) { return __fadd_rn(__fsub_rn(b.w, b.y), o); }

// IoU(a, b) > thresh, DESIGN.md's formula in float32. NaN compares false.
__device__ __forceinline__ bool overlaps(float4 a, float area_a, float4 b, float area_b,
                                         const NmsConfig& cfg) {
  const float iw = fmaxf(0.0f, __fadd_rn(__fsub_rn(fminf(a.z, b.z), fmaxf(a.x, b.x)), cfg.offset));
  const float ih = fmaxf(0.0f, __fadd_rn(__fsub_rn(fminf(a.w, b.w), fmaxf(a.y, b.y)), cfg.offset));
  const float inter = __fmul_rn(iw, ih);
  return __fdiv_rn(inter, __fsub_rn(__fadd_rn(area_a, area_b), inter)) > cfg.thresh;
}

// A box with w <= 0, h <= 0 or a non-finite area has IoU <= 0 (or NaN) with every box, so it
// never suppresses and is never suppressed: it is kept without looking at other boxes.
__device__ __forceinline__ bool isolated(float w, float h, float area) {
  return !(w > 0.0f && h > 0.0f && isfinite(area));
}

// Whether a kept box is written: with drop_outside, only one that overlaps the image's pixel
// area (touching its border counts; a NaN coordinate does not): runtime/postprocess.py's
// inside_image, in float32 as there.
__device__ __forceinline__ bool written(float4 b, const NmsConfig& cfg) {
  return !cfg.drop_outside ||
         (b.z >= cfg.base && b.w >= cfg.base && b.x <= cfg.max_x && b.y <= cfg.max_y);
}

// numpy's clip of a float: min(max(v, lo), hi), NaN staying NaN (fminf / fmaxf would clip it).
__device__ __forceinline__ float clip_to(float v, float lo, float hi) {
  if (isnan(v)) return v;
  v = v > lo ? v : lo;
  return v < hi ? v : hi;
}

// floor(log2(d)) clamped to [0, kTopClass]; monotone in d. Class k <= 29 holds d < 2^(k+1).
__device__ __forceinline__ int size_class(float d) {
  if (!(d >= 2.0f)) return 0;
  if (d >= 1073741824.0f) return kTopClass;
  return static_cast<int>((__float_as_uint(d) >> 23) & 0xffu) - 127;
}

// 2^(k+1) as a float: the size bound of class k < kTopClass.
__device__ __forceinline__ float class_side(int k) {
  return __uint_as_float(static_cast<uint32_t>(127 + k + 1) << 23);
}

// floor(v / 2^(k+1-grain)) + bias, clamped to [-1, 2^bits - 1] (monotone in v). k < kTopClass.
__device__ __forceinline__ int cell_of(float v, int k, int bias, int bits, int grain) {
  const float inv = __uint_as_float(static_cast<uint32_t>(127 + grain - (k + 1)) << 23);
  float c = floorf(__fmul_rn(v, inv));
  c = fminf(fmaxf(c, static_cast<float>(-bias - 1)), static_cast<float>((1 << bits) - 1 - bias));
  return static_cast<int>(c) + bias;
}

__device__ __forceinline__ uint32_t cell_code(int k, int ycode, int xcode) {
  return (static_cast<uint32_t>(k) << kClassShift) | (static_cast<uint32_t>(ycode) << kXBits) |
         static_cast<uint32_t>(xcode);
}

__device__ __forceinline__ uint32_t lower_bound(const uint32_t* __restrict__ a, uint32_t lo,
                                                uint32_t hi, uint32_t v) {
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// --- kernels ------------------------------------------------------------------------------------

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
    ctrl->next_chunk = 0;
    stats->num_kept = 0;
    stats->num_candidates = total;
    stats->overflow = overflow;
    stats->nonfinite = count[tf::kNonfiniteWord];  // the candidate header's second word
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

// Cell code per rank (sentinel past n), rank as the sort value; statuses and flags reset.
__global__ void nms_bin_kernel(const Control* __restrict__ ctrl, const float4* __restrict__ boxes,
                               const NmsConfig cfg, uint32_t m, uint32_t* cells, uint32_t* ranks,
                               uint8_t* status, uint32_t* flags) {
  const uint32_t n = ctrl->n;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < m; i += gridDim.x * blockDim.x) {
    uint32_t code = kIsolatedCell;
    if (i < n) {
      const float4 b = boxes[i];
      const float w = box_w(b, cfg.offset), h = box_h(b, cfg.offset);
      if (!isolated(w, h, __fmul_rn(w, h))) {
        const int k = size_class(fmaxf(w, h));
        code = k == kTopClass ? cell_code(k, 0, 0)
                              : cell_code(k, max(cell_of(b.y, k, kYBias, kYBits, kYGrain), 0),
                                          max(cell_of(b.x, k, kXBias, kXBits, kXGrain), 0));
      }
    }
    cells[i] = code;
    ranks[i] = i;
    status[i] = kUndecided;
    flags[i] = 0;
  }
}

// Boxes in cell-sorted order: the walks read them as a stream.
__global__ void nms_cell_gather_kernel(const Control* __restrict__ ctrl,
                                       const uint32_t* __restrict__ ranks,
                                       const float4* __restrict__ boxes, float4* cell_boxes) {
  const uint32_t n = ctrl->n;
  for (uint32_t p = blockIdx.x * blockDim.x + threadIdx.x; p < n; p += gridDim.x * blockDim.x)
    cell_boxes[p] = boxes[ranks[p]];
}

constexpr uint32_t kNoBlocker = 0xffffffffu;

// Where a walk is: class, grid row, columns, position in the cell-sorted arrays.
struct Cursor {
  int k;                // size class now
  int y, y_hi;          // grid row now / last (in class k)
  int x_lo, x_hi;       // grid columns of class k
  uint32_t p, p_end;    // position in the cell-sorted arrays / end of the row
};

// Box j (its box, w, h, area) and its walk over candidate suppressors.
struct Walk {
  float4 b;
  float w, h, area;
  int k_hi;             // last size class
  Cursor c;
  uint32_t blocker;     // lookahead: the undecided box waited on (kNoBlocker: none)
};

// Row y of class k: the positions of its columns x_lo..x_hi (codes ascend by class and row,
// so the search starts at `from`, the end of the previous row searched, or 0).
__device__ __forceinline__ void walk_row(Cursor& c, const uint32_t* __restrict__ cells, uint32_t n,
                                         uint32_t from) {
  c.p = lower_bound(cells, from, n, cell_code(c.k, c.y, c.x_lo));
  c.p_end = lower_bound(cells, c.p, n, cell_code(c.k, c.y, c.x_hi) + 1u);
}

// First and last cell (float32, as the emulation) of the window [v - f*side - m, v + f*size + m]
// holding x1 (or y1) of every class-k box i with IoU(i, j) > t: the x overlap must be more
// than t*max(w_i, w_j), so x1_j - (1-t)*w_i < x1_i < x1_j + (1-t)*w_j, and w_i < side = 2^(k+1).
__device__ __forceinline__ void window(float v, float v2, float size, float side, float f, float o,
                                       int k, int bias, int bits, int grain, int& first, int& last) {
  const float m = __fmul_rn(__fadd_rn(__fadd_rn(__fadd_rn(fabsf(v), fabsf(v2)), side), o),
                            kPositionMargin);
  first = max(cell_of(__fsub_rn(__fsub_rn(v, __fmul_rn(f, side)), m), k, bias, bits, grain), 0);
  last = max(cell_of(__fadd_rn(__fadd_rn(v, __fmul_rn(f, size)), m), k, bias, bits, grain), 0);
}

// Class k's window of box b (w x h): its grid rows y_lo..y_hi and columns x_lo..x_hi.
struct ClassWindow {
  int y_lo, y_hi, x_lo, x_hi;
};

__device__ __forceinline__ ClassWindow class_window(const float4& b, float w, float h, int k,
                                                    const NmsConfig& cfg) {
  ClassWindow cw{0, 0, 0, 0};
  if (k != kTopClass) {
    const float side = class_side(k), f = __fsub_rn(1.0f, __fmul_rn(cfg.thresh, kWindowMargin));
    window(b.y, b.w, h, side, f, cfg.offset, k, kYBias, kYBits, kYGrain, cw.y_lo, cw.y_hi);
    window(b.x, b.z, w, side, f, cfg.offset, k, kXBias, kXBits, kXGrain, cw.x_lo, cw.x_hi);
  }
  return cw;
}

// Class c.k's window and its first row (searched from `from`).
__device__ __forceinline__ void walk_class(Walk& w, const NmsConfig& cfg,
                                           const uint32_t* __restrict__ cells, uint32_t n,
                                           uint32_t from) {
  Cursor& c = w.c;
  const ClassWindow cw = class_window(w.b, w.w, w.h, c.k, cfg);
  c.y = cw.y_lo;
  c.y_hi = cw.y_hi;
  c.x_lo = cw.x_lo;
  c.x_hi = cw.x_hi;
  walk_row(c, cells, n, from);
}

// IoU > t needs w_i > t*w_j and h_i > t*h_j (so d_i = max(w_i, h_i) > t*d_j), d_i < d_j / t
// and area_i > t*area_j (so d_i > sqrt(t*area_j)): the classes of the possible suppressors.
struct ClassRange {
  int lo, hi;
};

__device__ __forceinline__ ClassRange suppressor_classes(float w, float h, float area,
                                                         const NmsConfig& cfg) {
  const float d = fmaxf(w, h);
  const float tm = __fmul_rn(cfg.thresh, kWindowMargin);
  return {max(size_class(__fmul_rn(tm, d)),
              size_class(__fmul_rn(__fsqrt_rn(__fmul_rn(tm, area)), kWindowMargin))),
          tm > 0.0f ? size_class(__fdiv_rn(d, tm)) : kTopClass};
}

__device__ __forceinline__ void walk_start(Walk& w, const NmsConfig& cfg,
                                           const uint32_t* __restrict__ cells, uint32_t n) {
  const ClassRange classes = suppressor_classes(w.w, w.h, w.area, cfg);
  w.c.k = classes.lo;
  w.k_hi = classes.hi;
  w.blocker = kNoBlocker;
  walk_class(w, cfg, cells, n, 0);
}

// Advances box j's walk; returns its status (kUndecided: it waits on an undecided box).
// Walk order (kLookahead false): the first overlapping box that is not SUPPRESSED decides (KEPT
// suppresses j, UNDECIDED makes it wait there). Lookahead: the walk goes on past UNDECIDED ones
// for a KEPT one; if there is none it waits on the first UNDECIDED one (the blocker), reading
// only the blocker's status until it decides, then walks on from it.
template <bool kLookahead>
__device__ uint8_t walk_advance(Walk& w, uint32_t j, const uint32_t* __restrict__ cells,
                                const uint32_t* __restrict__ ranks,
                                const float4* __restrict__ cell_boxes,
                                const volatile uint8_t* status, const NmsConfig& cfg, uint32_t n) {
  if (kLookahead && w.blocker != kNoBlocker) {
    if (status[w.blocker] == kUndecided) return kUndecided;  // one read per poll
    w.blocker = kNoBlocker;                                   // decided: walk on from it
  }
  int resume_k = 0, resume_y = 0;  // lookahead: the blocker's class, row and position
  uint32_t resume_p = 0;
  Cursor& c = w.c;
  for (;;) {
    while (c.p < c.p_end) {
      const uint32_t i = ranks[c.p];
      if (i >= j) {  // the rest of this cell comes later in NMS order: next cell of the row
        c.p = lower_bound(cells, c.p + 1, c.p_end, cells[c.p] + 1u);
        continue;
      }
      const float4 bi = cell_boxes[c.p];
      if (overlaps(bi, __fmul_rn(box_w(bi, cfg.offset), box_h(bi, cfg.offset)), w.b, w.area, cfg)) {
        const uint8_t s = status[i];
        if (s == kKept) return kSuppressed;
        if (s == kUndecided) {
          if (!kLookahead) return kUndecided;  // retry from here
          if (w.blocker == kNoBlocker) {
            w.blocker = i;
            resume_k = c.k;
            resume_y = c.y;
            resume_p = c.p;
          }
        }
      }
      ++c.p;
    }
    if (c.y < c.y_hi) {
      ++c.y;
      walk_row(c, cells, n, c.p_end);
    } else if (c.k < w.k_hi) {
      ++c.k;
      walk_class(w, cfg, cells, n, c.p_end);
    } else if (kLookahead && w.blocker != kNoBlocker) {
      c.k = resume_k;  // wait on the blocker, then walk on from it: back to its row
      walk_class(w, cfg, cells, n, 0);
      c.y = resume_y;
      walk_row(c, cells, n, 0);
      c.p = resume_p;
      return kUndecided;
    } else {
      return kKept;
    }
  }
}

template <bool kLookahead>
__global__ void __launch_bounds__(kResolveThreads)
    nms_resolve_kernel(Control* ctrl, const uint32_t* __restrict__ cells,
                       const uint32_t* __restrict__ ranks, const float4* __restrict__ boxes,
                       const float4* __restrict__ cell_boxes, const NmsConfig cfg,
                       volatile uint8_t* status, uint32_t* __restrict__ flags) {
  __shared__ uint32_t chunk;
  const uint32_t n = ctrl->n;
  for (;;) {
    if (threadIdx.x == 0) chunk = atomicAdd(&ctrl->next_chunk, 1u);
    __syncthreads();
    const uint64_t first = static_cast<uint64_t>(chunk) * kResolveThreads;
    if (first >= n) return;  // uniform per block
    const uint32_t j = static_cast<uint32_t>(first) + threadIdx.x;
    bool undecided = j < n;
    Walk w{};
    if (undecided) {
      w.b = boxes[j];
      w.w = box_w(w.b, cfg.offset);
      w.h = box_h(w.b, cfg.offset);
      w.area = __fmul_rn(w.w, w.h);
      if (isolated(w.w, w.h, w.area)) {
        status[j] = kKept;
        flags[j] = written(w.b, cfg);
        undecided = false;
      } else {
        walk_start(w, cfg, cells, n);
      }
    }
    // Every thread retries until its box is decided; boxes of earlier chunks are decided by
    // blocks that are running, so this terminates (see the file comment).
    while (__syncthreads_or(undecided)) {
      if (undecided) {
        const uint8_t s = walk_advance<kLookahead>(w, j, cells, ranks, cell_boxes, status, cfg, n);
        if (s != kUndecided) {
          flags[j] = s == kKept && written(w.b, cfg);
          status[j] = s;
          undecided = false;
        }
      }
    }
  }
}

// --- the warp rule (tf_nms_params.lookahead = 2): one warp walks one box ---------------------

constexpr unsigned kFullWarp = 0xffffffffu;

// Inclusive prefix sum of v over the warp's lanes.
__device__ __forceinline__ uint32_t warp_inclusive_sum(uint32_t v, unsigned lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t t = __shfl_sync(kFullWarp, v, lane >= static_cast<unsigned>(o) ? lane - o : lane);
    if (lane >= static_cast<unsigned>(o)) v += t;
  }
  return v;
}

__device__ __forceinline__ uint32_t warp_min(uint32_t v, unsigned lane) {
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_sync(kFullWarp, v, lane ^ o));
  return v;
}

// One pass over box j's whole walk (suppressor_classes, class_window: as walk_start). Its
// grid rows, numbered class by class, go 32 at a time to the warp's lanes, each finding its
// row's bounds with its own two searches; then the candidates of those rows go 32 at a time
// to the lanes. Returns kSuppressed when an overlapping earlier box is KEPT; else kKept when
// none is UNDECIDED; else kUndecided, with `blocker` the lowest rank of those. Warp-uniform.
__device__ __forceinline__ uint8_t warp_walk_pass(uint32_t j, const float4 b, float w, float h,
                                                  float area, ClassRange classes,
                                                  const uint32_t* __restrict__ cells,
                                                  const uint32_t* __restrict__ ranks,
                                                  const float4* __restrict__ cell_boxes,
                                                  const volatile uint8_t* status,
                                                  const NmsConfig& cfg, uint32_t n, unsigned lane,
                                                  uint32_t& blocker) {
  blocker = kNoBlocker;
  uint32_t rows = 0;
  for (int k = classes.lo; k <= classes.hi; ++k) {
    const ClassWindow cw = class_window(b, w, h, k, cfg);
    rows += static_cast<uint32_t>(cw.y_hi - cw.y_lo + 1);
  }
  for (uint32_t row0 = 0; row0 < rows; row0 += 32) {
    uint32_t p = 0, len = 0;
    if (row0 + lane < rows) {  // this lane's row: class k, grid row y
      uint32_t r = row0 + lane;
      int k = classes.lo;
      ClassWindow cw = class_window(b, w, h, k, cfg);
      while (r > static_cast<uint32_t>(cw.y_hi - cw.y_lo)) {
        r -= static_cast<uint32_t>(cw.y_hi - cw.y_lo + 1);
        cw = class_window(b, w, h, ++k, cfg);
      }
      const int y = cw.y_lo + static_cast<int>(r);
      p = lower_bound(cells, 0, n, cell_code(k, y, cw.x_lo));
      len = lower_bound(cells, p, n, cell_code(k, y, cw.x_hi) + 1u) - p;
    }
    const uint32_t incl = warp_inclusive_sum(len, lane);
    const uint32_t excl = incl - len;
    const uint32_t total = __shfl_sync(kFullWarp, incl, 31);
    for (uint32_t base = 0; base < total; base += 32) {
      const uint32_t at = base + lane;
      int row = 0;  // the first lane whose candidates end past `at`: the row holding it
      for (int step = 16; step > 0; step >>= 1) {
        if (__shfl_sync(kFullWarp, incl, row + step - 1) <= at) row += step;
      }
      const uint32_t row_p = __shfl_sync(kFullWarp, p, row);
      const uint32_t row_excl = __shfl_sync(kFullWarp, excl, row);
      bool kept = false, undecided = false;
      uint32_t i = kNoBlocker;
      if (at < total) {
        const uint32_t pos = row_p + (at - row_excl);
        i = ranks[pos];
        if (i < j) {
          const float4 bi = cell_boxes[pos];
          if (overlaps(bi, __fmul_rn(box_w(bi, cfg.offset), box_h(bi, cfg.offset)), b, area, cfg)) {
            const uint8_t st = status[i];
            kept = st == kKept;
            undecided = st == kUndecided;
          }
        }
      }
      if (__ballot_sync(kFullWarp, kept)) return kSuppressed;
      if (__ballot_sync(kFullWarp, undecided))
        blocker = min(blocker, warp_min(undecided ? i : kNoBlocker, lane));
    }
  }
  return blocker == kNoBlocker ? kKept : kUndecided;
}

// One warp per box: warps take boxes in NMS order from the ticket; a box waits only on an
// earlier one, whose warp took its ticket before and is running, so the lowest undecided box
// always decides (as in nms_resolve_kernel). A pass that meets an UNDECIDED overlapping box
// and no KEPT one waits for the lowest such, then walks again: the same boxes as greedy NMS.
// (no __launch_bounds__: with it ptxas capped the registers and spilled on sm_90)
__global__ void nms_resolve_warp_kernel(Control* ctrl, const uint32_t* __restrict__ cells,
                                        const uint32_t* __restrict__ ranks,
                                        const float4* __restrict__ boxes,
                                        const float4* __restrict__ cell_boxes,
                                        const NmsConfig cfg, volatile uint8_t* status,
                                        uint32_t* __restrict__ flags) {
  const unsigned lane = threadIdx.x & 31u;
  const uint32_t n = ctrl->n;
  for (;;) {
    uint32_t j = 0;
    if (lane == 0) j = atomicAdd(&ctrl->next_chunk, 1u);
    j = __shfl_sync(kFullWarp, j, 0);
    if (j >= n) return;  // warp-uniform
    const float4 b = boxes[j];
    const float w = box_w(b, cfg.offset), h = box_h(b, cfg.offset);
    const float area = __fmul_rn(w, h);
    uint8_t decided = kKept;
    if (!isolated(w, h, area)) {
      const ClassRange classes = suppressor_classes(w, h, area, cfg);
      for (;;) {
        uint32_t blocker = kNoBlocker;
        decided = warp_walk_pass(j, b, w, h, area, classes, cells, ranks, cell_boxes, status,
                                 cfg, n, lane, blocker);
        if (decided != kUndecided) break;
        unsigned st;  // the blocker's status, polled by lane 0 (a collective per poll)
        do {
          st = __shfl_sync(kFullWarp, lane == 0 ? static_cast<unsigned>(status[blocker]) : 0u, 0);
        } while (st == kUndecided);
        if (st == kKept) {  // it overlaps box j
          decided = kSuppressed;
          break;
        }
      }
    }
    if (lane == 0) {
      flags[j] = decided == kKept && written(b, cfg);
      status[j] = decided;
    }
  }
}

// Flagged boxes (the kept ones, less those outside the image with drop_outside; clipped if
// asked; the sigmoid of the logit, or the logit itself with score_logit) written compacted
// in NMS order.
__global__ void nms_write_kernel(const Control* __restrict__ ctrl, const uint32_t* __restrict__ flags,
                                 const uint32_t* __restrict__ rows, const float4* __restrict__ boxes,
                                 const float* __restrict__ logits, const NmsConfig cfg,
                                 float* __restrict__ out, tf_nms_stats* stats) {
  const uint32_t n = ctrl->n;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t kept = flags[i];
    if (i == n - 1) stats->num_kept = rows[i] + kept;
    if (!kept) continue;
    float4 box = boxes[i];
    if (cfg.clip) {
      box.x = clip_to(box.x, cfg.base, cfg.max_x);
      box.y = clip_to(box.y, cfg.base, cfg.max_y);
      box.z = clip_to(box.z, cfg.base, cfg.max_x);
      box.w = clip_to(box.w, cfg.base, cfg.max_y);
    }
    float* row = out + 5 * static_cast<size_t>(rows[i]);
    row[0] = box.x;
    row[1] = box.y;
    row[2] = box.z;
    row[3] = box.w;
    row[4] = cfg.score_logit ? logits[i] : 1.0f / (1.0f + expf(-logits[i]));
  }
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
    return tf::fail(TF_STATUS_INVALID_CAPACITY, "max_candidates = %lld is outside [1, %lld]",
                    static_cast<long long>(max_candidates),
                    static_cast<long long>(TF_MAX_NMS_CANDIDATES));
  const tf_nms_params& p = *params;
  if (!(p.nms_thresh >= 0.0f && p.nms_thresh <= 1.0f))
    return tf::fail(TF_STATUS_INVALID_VALUE, "nms_thresh = %g is outside [0, 1]", p.nms_thresh);
  if (p.lookahead < 0 || p.lookahead > 2)
    return tf::fail(TF_STATUS_INVALID_VALUE, "lookahead = %d must be 0, 1 or 2", p.lookahead);
  if (p.score_logit != 0 && p.score_logit != 1)
    return tf::fail(TF_STATUS_INVALID_VALUE, "score_logit = %d must be 0 or 1", p.score_logit);
  if (p.drop_outside != 0 && p.drop_outside != 1)
    return tf::fail(TF_STATUS_INVALID_VALUE, "drop_outside = %d must be 0 or 1", p.drop_outside);
  if (p.pixel_base != 0.0f && p.pixel_base != 1.0f)
    return tf::fail(TF_STATUS_INVALID_VALUE, "pixel_base = %g must be 0 or 1", p.pixel_base);
  if (!(tf::finite(p.pixel_offset) && p.pixel_offset >= 0.0f))
    return tf::fail(TF_STATUS_INVALID_VALUE, "pixel_offset = %g must be finite and >= 0",
                    p.pixel_offset);
  if (p.image_height < 1 || p.image_height > TF_MAX_DIM)
    return tf::fail(TF_STATUS_INVALID_SIZE, "image_height = %d is outside [1, %d]",
                    p.image_height, TF_MAX_DIM);
  if (p.image_width < 1 || p.image_width > TF_MAX_DIM)
    return tf::fail(TF_STATUS_INVALID_SIZE, "image_width = %d is outside [1, %d]", p.image_width,
                    TF_MAX_DIM);
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

// The resolve kernel's blocks: one per `boxes_per_block` of the m boxes, at most
// kMaxResolveBlocks (persistent: they take the rest from the ticket).
unsigned int resolve_blocks(uint32_t m, uint32_t boxes_per_block) {
  const uint64_t blocks = (static_cast<uint64_t>(m) + boxes_per_block - 1) / boxes_per_block;
  return static_cast<unsigned int>(blocks < kMaxResolveBlocks ? blocks : kMaxResolveBlocks);
}

// Whether an NMS of size m sorts in one block each (m <= kBlockSortMax and the current GPU
// gives a block that much shared memory: compute capability 9.0 does, 8.0 does not); sets
// the two block-sort kernels' shared-memory limit where it does. Host calls only (no work
// enqueued), allowed during stream capture.
tf_status use_block_sorts(uint32_t m, bool& use) {
  use = false;
  if (m > tf::kBlockSortMax) return TF_STATUS_SUCCESS;
  int device = 0, optin = 0;
  TF_RETURN_IF_ERROR(tf::check_cuda(cudaGetDevice(&device), "cudaGetDevice"));
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "cudaDeviceGetAttribute (shared memory per block)"));
  const size_t need = tf::block_sort_shared_bytes<unsigned long long>();
  if (optin < 0 || static_cast<size_t>(optin) < need) return TF_STATUS_SUCCESS;
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cudaFuncSetAttribute(tf::block_sort_kernel<unsigned long long>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(need)),
      "cudaFuncSetAttribute (block sort, keys)"));
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cudaFuncSetAttribute(tf::block_sort_kernel<uint32_t>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(tf::block_sort_shared_bytes<uint32_t>())),
      "cudaFuncSetAttribute (block sort, cells)"));
  use = true;
  return TF_STATUS_SUCCESS;
}

// Sorts (key, order) pairs on all of Key's bits, stably: the first ctrl->n in one block
// (block_sort.cuh; the order values are 0, 1, 2, ... on entry, as it assumes), else all
// `items` with CUB (the result in the buffers' Current(), whichever CUB leaves it in).
template <typename Key>
tf_status sort_pairs(bool one_block, Control* ctrl, cub::DoubleBuffer<Key>& keys,
                     cub::DoubleBuffer<uint32_t>& order, int items, void* temp, size_t& temp_bytes,
                     cudaStream_t s, const char* what) {
  const int bits = 8 * static_cast<int>(sizeof(Key));
  if (one_block)
    return tf::launch(bits == 64 ? "nms block sort kernel launch"
                                 : "nms block sort kernel launch (cells)",
                      tf::block_sort_kernel<Key>, dim3(1), dim3(tf::kBlockSortThreads),
                      tf::block_sort_shared_bytes<Key>(), s, static_cast<const uint32_t*>(&ctrl->n),
                      keys.Current(), order.Current(), bits);
  return tf::check_cuda(
      cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, order, items, 0, bits, s), what);
}

tf_status check_cub_bytes(size_t need, int64_t m, const char* what) {
  if (need <= sort_temp_bound(m)) return TF_STATUS_SUCCESS;
  return tf::fail(TF_STATUS_WORKSPACE_TOO_SMALL,
                  "internal: %s needs %zu bytes of temporary storage, the workspace reserves %zu",
                  what, need, sort_temp_bound(m));
}

}  // namespace

extern "C" {

TINYFACES_API tf_status tf_nms_workspace_size(int64_t max_candidates, size_t* bytes) {
  tf::clear_error();
  if (bytes == nullptr) return tf::fail(TF_STATUS_NULL_POINTER, "bytes is NULL");
  if (max_candidates < 1 || max_candidates > TF_MAX_NMS_CANDIDATES)
    return tf::fail(TF_STATUS_INVALID_CAPACITY, "max_candidates = %lld is outside [1, %lld]",
                    static_cast<long long>(max_candidates),
                    static_cast<long long>(TF_MAX_NMS_CANDIDATES));
  *bytes = nms_layout(max_candidates).total;
  return TF_STATUS_SUCCESS;
}

TINYFACES_API tf_status tf_nms(const void* candidates, int64_t capacity, const tf_nms_params* params,
                               int64_t max_candidates, void* workspace, size_t workspace_bytes,
                               float* out_boxes, tf_nms_stats* out_stats, tf_stream_t stream) {
  tf::clear_error();
  TF_RETURN_IF_ERROR(check_nms_args(candidates, capacity, params, max_candidates, workspace,
                                    out_boxes, out_stats));
  const NmsLayout layout = nms_layout(max_candidates);
  if (workspace_bytes < layout.total)
    return tf::fail(TF_STATUS_WORKSPACE_TOO_SMALL, "workspace_bytes = %zu, need %zu",
                    workspace_bytes, layout.total);
  // Arguments checked: from here on CUB is called (its launches report the runtime's last
  // error, so a stale one from an earlier failed call of this thread must go first).
  tf::clear_stale_cuda_error();

  const cudaStream_t s = stream;
  const uint32_t m = static_cast<uint32_t>(max_candidates);
  const int items = static_cast<int>(max_candidates);
  const tf::CandidateView cand = tf::candidate_view(const_cast<void*>(candidates), capacity);
  char* base = static_cast<char*>(workspace);
  Control* ctrl = reinterpret_cast<Control*>(base + layout.control);
  unsigned long long* keys_a = reinterpret_cast<unsigned long long*>(base + layout.keys_a);
  unsigned long long* keys_b = reinterpret_cast<unsigned long long*>(base + layout.keys_b);
  uint32_t* slots_a = reinterpret_cast<uint32_t*>(base + layout.slots_a);
  uint32_t* slots_b = reinterpret_cast<uint32_t*>(base + layout.slots_b);
  cub::DoubleBuffer<unsigned long long> keys(keys_a, keys_b);
  cub::DoubleBuffer<uint32_t> slots(slots_a, slots_b);
  float4* boxes = reinterpret_cast<float4*>(base + layout.boxes);
  float4* cell_boxes = reinterpret_cast<float4*>(base + layout.cell_boxes);
  float* logits = reinterpret_cast<float*>(base + layout.logits);
  uint8_t* status = reinterpret_cast<uint8_t*>(base + layout.status);
  void* temp = base + layout.sort_temp;
  // After the gather: the cell sort's double buffers live in keys_a / keys_b (two uint32
  // arrays each), the kept flags in slots_a and the output rows in slots_b.
  cub::DoubleBuffer<uint32_t> cells(reinterpret_cast<uint32_t*>(keys_a), reinterpret_cast<uint32_t*>(keys_b));
  cub::DoubleBuffer<uint32_t> ranks(reinterpret_cast<uint32_t*>(keys_a) + m,
                                    reinterpret_cast<uint32_t*>(keys_b) + m);
  uint32_t* flags = slots_a;
  uint32_t* rows = slots_b;
  const float pixel_base = params->pixel_base + 0.0f;  // -0.0 (accepted as 0) as +0.0
  const NmsConfig cfg{params->nms_thresh,
                      params->pixel_offset,
                      params->clip != 0,
                      params->score_logit,
                      params->drop_outside,
                      pixel_base,
                      pixel_base + static_cast<float>(params->image_width - 1),
                      pixel_base + static_cast<float>(params->image_height - 1)};
  const unsigned int item_blocks = tf::blocks_for(m, kPrepareThreads);

  // CUB's storage requests (host-side queries) against the reserved bound, all before the
  // first launch: a failed check returns with nothing enqueued (out_stats untouched).
  size_t sort_bytes = 0, cell_sort_bytes = 0, scan_bytes = 0;
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys, slots, items, 0, 64, s),
      "cub::DeviceRadixSort::SortPairs (size query)"));
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cub::DeviceRadixSort::SortPairs(nullptr, cell_sort_bytes, cells, ranks, items, 0, 32, s),
      "cub::DeviceRadixSort::SortPairs (cells, size query)"));
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, flags, rows, items, s),
      "cub::DeviceScan::ExclusiveSum (size query)"));
  TF_RETURN_IF_ERROR(check_cub_bytes(sort_bytes, max_candidates, "cub::DeviceRadixSort (keys)"));
  TF_RETURN_IF_ERROR(check_cub_bytes(cell_sort_bytes, max_candidates, "cub::DeviceRadixSort (cells)"));
  TF_RETURN_IF_ERROR(check_cub_bytes(scan_bytes, max_candidates, "cub::DeviceScan"));
  size_t temp_bytes = sort_temp_bound(max_candidates);
  // Both sorts in one block each (block_sort.cuh) where they fit, else CUB's. Either way the
  // values sorted along are 0, 1, 2, ... (the prepare and bin kernels set them): the order.
  bool block_sorts = false;
  TF_RETURN_IF_ERROR(use_block_sorts(m, block_sorts));

  TF_RETURN_IF_ERROR(tf::launch("nms prepare kernel launch", nms_prepare_kernel, dim3(item_blocks),
                                dim3(kPrepareThreads), 0, s, static_cast<const uint32_t*>(cand.count),
                                static_cast<const unsigned long long*>(cand.keys),
                                static_cast<uint32_t>(capacity),
                                m, keys.Current(), slots.Current(), ctrl, out_stats));
  TF_RETURN_IF_ERROR(sort_pairs(block_sorts, ctrl, keys, slots, items, temp, temp_bytes, s,
                                "cub::DeviceRadixSort::SortPairs"));
  TF_RETURN_IF_ERROR(tf::launch("nms gather kernel launch", nms_gather_kernel, dim3(item_blocks),
                                dim3(kPrepareThreads), 0, s, static_cast<const Control*>(ctrl),
                                static_cast<const unsigned long long*>(keys.Current()),
                                static_cast<const uint32_t*>(slots.Current()),
                                static_cast<const float4*>(cand.boxes), boxes, logits));
  TF_RETURN_IF_ERROR(tf::launch("nms bin kernel launch", nms_bin_kernel, dim3(item_blocks),
                                dim3(kPrepareThreads), 0, s, static_cast<const Control*>(ctrl),
                                static_cast<const float4*>(boxes), cfg, m, cells.Current(),
                                ranks.Current(), status, flags));
  temp_bytes = sort_temp_bound(max_candidates);
  TF_RETURN_IF_ERROR(sort_pairs(block_sorts, ctrl, cells, ranks, items, temp, temp_bytes, s,
                                "cub::DeviceRadixSort::SortPairs (cells)"));
  TF_RETURN_IF_ERROR(tf::launch("nms cell gather kernel launch", nms_cell_gather_kernel,
                                dim3(item_blocks), dim3(kPrepareThreads), 0, s,
                                static_cast<const Control*>(ctrl),
                                static_cast<const uint32_t*>(ranks.Current()),
                                static_cast<const float4*>(boxes), cell_boxes));
  // the warp rule: one warp per box, as many as fit (blocks beyond the resident ones start
  // as others end and find the ticket past n)
  const bool warp_rule = params->lookahead == 2;
  const unsigned int resolve_grid =
      resolve_blocks(m, warp_rule ? kResolveThreads / 32 : kResolveThreads);
  TF_RETURN_IF_ERROR(tf::launch("nms resolve kernel launch",
                                warp_rule ? nms_resolve_warp_kernel
                                : params->lookahead ? nms_resolve_kernel<true>
                                                    : nms_resolve_kernel<false>,
                                dim3(resolve_grid),
                                dim3(kResolveThreads), 0, s, ctrl,
                                static_cast<const uint32_t*>(cells.Current()),
                                static_cast<const uint32_t*>(ranks.Current()),
                                static_cast<const float4*>(boxes),
                                static_cast<const float4*>(cell_boxes), cfg,
                                static_cast<volatile uint8_t*>(status), flags));
  temp_bytes = sort_temp_bound(max_candidates);
  TF_RETURN_IF_ERROR(tf::check_cuda(
      cub::DeviceScan::ExclusiveSum(temp, temp_bytes, flags, rows, items, s),
      "cub::DeviceScan::ExclusiveSum"));
  return tf::launch("nms write kernel launch", nms_write_kernel, dim3(item_blocks),
                    dim3(kPrepareThreads), 0, s, static_cast<const Control*>(ctrl),
                    static_cast<const uint32_t*>(flags), static_cast<const uint32_t*>(rows),
                    static_cast<const float4*>(boxes), static_cast<const float*>(logits), cfg,
                    out_boxes, out_stats);
}

}  // extern "C"
