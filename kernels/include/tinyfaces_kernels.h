/*
 * tinyfaces_kernels.h -- C ABI of the Tiny Faces CUDA kernels.
 *
 *   pyramid resize + normalise : uint8 HWC RGB image -> network input (1,3,h,w) float32 NCHW
 *   decode (one pyramid level) : score map (1,125,h,w) float32 -> candidates appended to a
 *                                buffer shared by all levels of one image
 *   sort + NMS                 : candidates -> (N,5) float32 [x1,y1,x2,y2,sigmoid(logit)]
 *                                (or, with tf_nms_params.score_logit, [x1,y1,x2,y2,logit])
 *
 * Semantics are those of docs/DESIGN.md ("Resize + normalise", "Decode", "NMS"); the numpy
 * modules runtime/resize.py, decode.py and nms.py are the reference.
 *
 * Conventions (every function):
 *   - Returns a tf_status. Arguments are validated on the host BEFORE any CUDA call, so a
 *     bad argument never reaches the GPU and is reported even on a machine without one.
 *     Every check (tf_nms's of CUB's storage requests too) comes before the first work is
 *     enqueued: a call that returns any status but TF_STATUS_CUDA_ERROR enqueued nothing.
 *   - Work is enqueued on the caller's stream (a cudaStream_t; NULL = legacy default
 *     stream). No function synchronises, allocates or copies to the host; everything is
 *     capturable in a CUDA graph. Results and counters are written to device memory.
 *   - Device memory is caller-owned: query its size (tf_*_size), allocate, pass it in.
 *     Candidate buffers and workspaces must be 16-byte aligned (cudaMalloc gives 256);
 *     float arrays 4-byte aligned.
 *   - The GPU is the calling thread's current device (cudaSetDevice): the stream and every
 *     device pointer must belong to it.
 *   - Host arguments (params structs, channel_scale/channel_bias) are read during the call;
 *     they may be freed or changed as soon as it returns.
 *   - Threads: the functions keep no shared state, so threads may call them at once on
 *     their own buffers. A buffer passed in (workspace, candidates, output) belongs to the
 *     enqueued work until it has run: work on another stream must not use it meanwhile.
 *     A candidate buffer and an NMS workspace hold device-side counters: one image's work
 *     uses them in stream order (reset, decode each level, NMS).
 *   - TF_STATUS_CUDA_ERROR: a CUDA runtime call failed; tf_last_cuda_error() gives its
 *     cudaError_t and tf_last_error_message() a readable detail (both per calling thread,
 *     describing its last call; the message's storage belongs to the thread and is
 *     rewritten by its next call: copy it to keep it).
 *     Kernel faults surface asynchronously, at the caller's next synchronisation.
 */
#ifndef TINYFACES_KERNELS_H
#define TINYFACES_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* (not TF_API: a name other libraries' headers define too) */
#if defined(_WIN32)
#define TINYFACES_API __declspec(dllexport)
#else
#define TINYFACES_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The shared library's SONAME is libtinyfaces_kernels.so.<TF_KERNELS_ABI_VERSION>
 * (kernels/Makefile reads the number from here); libtinyfaces_kernels.so links to it. */
#define TF_KERNELS_ABI_VERSION 5u

#define TF_NUM_TEMPLATES 25   /* templates; score map channels are 5 * 25 = 125 */
#define TF_NUM_CHANNELS 125

/* Largest image / score-map side accepted by any function (resize source and target,
 * decode score map, tf_nms_params' image size). */
#define TF_MAX_DIM 32768

/* Largest candidate-buffer capacity (candidates per image). */
#define TF_MAX_CAPACITY 2147483647LL

/* Largest number of candidates one tf_nms call can take (max_candidates): the candidate
 * index range (NMS needs no N^2 structure any more; its workspace is ~69 bytes per candidate,
 * see tf_nms_workspace_size). ABI 1 capped this at 131072 (a dense suppression mask). */
#define TF_MAX_NMS_CANDIDATES 2147483647LL

/* A stream handle; the same type as cudaStream_t (pass one directly). */
typedef struct CUstream_st* tf_stream_t;

typedef enum tf_status {
  TF_STATUS_SUCCESS = 0,
  TF_STATUS_NULL_POINTER = 1,           /* a required pointer argument is NULL */
  TF_STATUS_INVALID_SIZE = 2,           /* a height or width is < 1 or > TF_MAX_DIM; a row
                                           pitch is below 3 * width or its rows would span
                                           more than 2^63 - 1 bytes; or the keys of a level
                                           would pass 2^32 - 1 (see tf_decode_level) */
  TF_STATUS_INVALID_CAPACITY = 3,       /* capacity not in [1, TF_MAX_CAPACITY] or
                                           max_candidates not in [1, TF_MAX_NMS_CANDIDATES] */
  TF_STATUS_INVALID_VALUE = 4,          /* a threshold or parameter is NaN / out of range */
  TF_STATUS_MISALIGNED = 5,             /* a buffer is not aligned as required */
  TF_STATUS_WORKSPACE_TOO_SMALL = 6,    /* workspace_bytes below the queried size */
  TF_STATUS_ABI_MISMATCH = 7,           /* tf_check_abi: caller built against another ABI */
  TF_STATUS_CUDA_ERROR = 8              /* a CUDA runtime call failed (see above) */
} tf_status;

/* Static description of a status code ("unknown tf_status" for other values). */
TINYFACES_API const char* tf_status_string(tf_status status);

/* cudaError_t behind the TF_STATUS_CUDA_ERROR of this thread's last call, 0 otherwise. */
TINYFACES_API int tf_last_cuda_error(void);

/* Detail of this thread's last call when it failed ("" after a success). */
TINYFACES_API const char* tf_last_error_message(void);

/* TF_KERNELS_ABI_VERSION the library was built with. */
TINYFACES_API uint32_t tf_abi_version(void);

/* Checks the caller's view of the ABI (version + struct sizes): SUCCESS or ABI_MISMATCH. */
TINYFACES_API tf_status tf_check_abi(uint32_t abi_version, size_t sizeof_decode_params,
                                     size_t sizeof_nms_params, size_t sizeof_nms_stats);

/* Number of CUDA devices visible (cudaGetDeviceCount); CUDA_ERROR without a driver. */
TINYFACES_API tf_status tf_get_device_count(int* count);

/* ---------------------------------------------------------------------------------------
 * Resize + normalise.  Pillow's antialiased BILINEAR resample in float (DESIGN.md):
 * horizontal pass into the workspace, then vertical pass, then x = pixel * scale[c] + bias[c]
 * written as (1, 3, dst_height, dst_width) float32. Coefficients in float64, sums in
 * float64, the intermediate in float32.
 * ------------------------------------------------------------------------------------- */

/* Workspace bytes for one src -> dst resize. Non-decreasing in src_height and src_width but
 * NOT monotone in the destination size: a smaller output needs more filter taps per output
 * pixel (1080x1920 -> 540x959 needs 12516352 bytes, -> 540x960 12513792). Query it for each
 * level, or reserve the bound 12*src_h*dst_w + 16*(max(src_w, dst_w) + max(src_h, dst_h))
 * + 32*(dst_w + dst_h) + 1280 bytes: never below the query, and monotone in every size. */
TINYFACES_API tf_status tf_resize_workspace_size(int src_height, int src_width, int dst_height,
                                                 int dst_width, size_t* bytes);

/* src: device pointer to src_height rows of src_width RGB uint8 pixels, rows
 * src_row_bytes apart (0 = tightly packed, 3 * src_width). The pitch has no upper bound of
 * its own: it must be >= 3 * src_width, and (src_height - 1) * src_row_bytes + 3 * src_width
 * must not exceed 2^63 - 1 (else INVALID_SIZE). dst: device (1,3,h,w) float32.
 * channel_scale / channel_bias: HOST arrays of 3 floats (finite). */
TINYFACES_API tf_status tf_resize_normalize(const uint8_t* src, int src_height, int src_width,
                                            int64_t src_row_bytes, float* dst, int dst_height,
                                            int dst_width, const float* channel_scale,
                                            const float* channel_bias, void* workspace,
                                            size_t workspace_bytes, tf_stream_t stream);

/* Resize plans (later within ABI 4): tf_resize_normalize computes the filter coefficients of
 * its size pair at every call (one small kernel more per call). A caller resizing many images
 * of one size computes them once into a plan with tf_resize_plan and resizes with
 * tf_resize_normalize_planned, which gives the same floats, bit for bit.
 * tf_resize_plan_size: the plan's bytes and the bytes of tf_resize_normalize_planned's
 * workspace (the horizontal pass's rows); both sum to tf_resize_workspace_size. */
TINYFACES_API tf_status tf_resize_plan_size(int src_height, int src_width, int dst_height,
                                            int dst_width, size_t* plan_bytes,
                                            size_t* workspace_bytes);

/* Enqueues the coefficients of src -> dst into `plan` (device memory, 16-byte aligned,
 * >= plan_bytes of tf_resize_plan_size). */
TINYFACES_API tf_status tf_resize_plan(int src_height, int src_width, int dst_height,
                                       int dst_width, void* plan, size_t plan_bytes,
                                       tf_stream_t stream);

/* tf_resize_normalize with the coefficients read from `plan`, which tf_resize_plan must have
 * made for the same four sizes (a plan of other sizes that is large enough is not detected:
 * it gives a wrong image) and which must not change while queued work reads it (order it on
 * the stream, or by events). `workspace`: >= workspace_bytes of tf_resize_plan_size, 16-byte
 * aligned. Checks and statuses as tf_resize_normalize's; `plan` as a workspace. */
TINYFACES_API tf_status tf_resize_normalize_planned(const uint8_t* src, int src_height,
                                                    int src_width, int64_t src_row_bytes,
                                                    float* dst, int dst_height, int dst_width,
                                                    const float* channel_scale,
                                                    const float* channel_bias, const void* plan,
                                                    size_t plan_bytes, void* workspace,
                                                    size_t workspace_bytes, tf_stream_t stream);

/* ---------------------------------------------------------------------------------------
 * Candidate buffer: one per image, shared by all its levels.
 * Layout (device memory, tf_candidates_size bytes): a 256-byte header holding two uint32
 * counters, at offset 0 the TRUE number of candidates decoded since the last reset (even past
 * capacity), at offset 4 the number of NaN / +-inf score-map values decoded since the last
 * reset (ABI 3); then the sort keys and boxes of the first `capacity` candidates. Overflow is
 * never silent: the counter keeps counting, tf_nms reports it (TF_OVERFLOW_CAPACITY) and
 * writes no boxes; grow the buffer to at least the reported count and decode again.
 * ------------------------------------------------------------------------------------- */

typedef struct tf_decode_params {
  float templates[TF_NUM_TEMPLATES][4]; /* [x1, y1, x2, y2] per template (finite) */
  uint32_t active_mask;   /* bit c set: template c is decoded at this level (bits 0..24) */
  float logit_thresh;     /* candidate when cls > logit_thresh (not NaN; +-inf allowed) */
  float stride;           /* score-map stride in pixels (> 0, finite), 8 */
  float offset;           /* centre of cell (0,0) in pixels (finite), -1 */
  float scale;            /* the level's nominal scale; boxes are divided by it (> 0) */
} tf_decode_params;

/* Bytes of a candidate buffer holding `capacity` candidates (~24 bytes each). */
TINYFACES_API tf_status tf_candidates_size(int64_t capacity, size_t* bytes);

/* Zeroes both counters (one 8-byte cudaMemsetAsync). Call once per image, before decoding. */
TINYFACES_API tf_status tf_candidates_reset(void* candidates, tf_stream_t stream);

/* Appends the candidates of one level: cell (c, y, x) of the (1,125,height,width) float32
 * score_map is a candidate when bit c of active_mask is set and cls[c,y,x] > logit_thresh
 * and its decoded box is finite. Its canonical key is key_base + (c*height + y)*width + x
 * (key_base = sum of 25*h*w over the image's earlier levels; key_base >= 0 and
 * key_base + 25*h*w <= 2^32 - 1, else INVALID_SIZE, for any int64 key_base). Box (float32): cx = x*stride + offset, cw = T[c][2] - T[c][0] + 1,
 * rcx = cx + cw*tx, rcw = cw*exp(tw) (same for y/h), box = [rcx - rcw/2, rcy - rch/2,
 * rcx + rcw/2, rcy + rch/2] / scale. Slots are taken with an atomic counter; the order of
 * slots is arbitrary, the keys make every later result deterministic.
 * Every value of the map (all 125 channels, active templates or not) is checked: the number
 * of NaN / +-inf values is added to the buffer's non-finite counter (tf_nms_stats.nonfinite).
 * Such a cell may still be a candidate: a NaN or -inf cls never passes, and a cell whose box
 * is not finite (a NaN or +-inf regression, or exp(tw) overflowing float32) is dropped, but a
 * +inf cls passes any logit_thresh below +inf and, with finite regressions, is a candidate
 * (ranked first, probability 1). A map holding any non-finite value means a broken network:
 * the Python runtime refuses the whole image (runtime/decode.py on the host, and the CUDA
 * postprocessor when tf_nms_stats.nonfinite != 0: NonFiniteScoresError); a C caller must
 * check nonfinite before using the boxes. The counter stops counting once past 2^31, so it
 * never wraps around to 0.
 * capacity: MUST equal the capacity the buffer was sized with (given to tf_candidates_size),
 * the same value for every level of the image and for tf_nms. The buffer does not record its
 * size, so this cannot be checked: with a larger value the kernel writes past the end of the
 * buffer (and still returns SUCCESS); with another value the boxes land at an offset where
 * tf_nms, given the buffer's capacity, does not read them. */
TINYFACES_API tf_status tf_decode_level(const float* score_map, int height, int width,
                                        const tf_decode_params* params, int64_t key_base,
                                        void* candidates, int64_t capacity, tf_stream_t stream);

/* ---------------------------------------------------------------------------------------
 * Sort + NMS.  Candidates are sorted by logit descending, ties by key ascending (radix sort
 * of a 64-bit key: order-preserving logit bits in the high word, canonical key in the low
 * word; with max_candidates <= 16384 in one thread block's shared memory where the GPU
 * gives a block 213 kB of it, as compute capability 9.0 does, else CUB's device-wide sort:
 * the same order), then greedy NMS: a kept box suppresses every later box with IoU > nms_thresh,
 * area = (x2 - x1 + o) * (y2 - y1 + o), iw = max(0, min(x2) - max(x1) + o), o =
 * pixel_offset (float32, every operation rounded, no FMA). The result is exactly the serial
 * greedy result at every count up to max_candidates; there is no candidate cap besides
 * TF_MAX_NMS_CANDIDATES and no N^2 memory:
 *   - a spatial grid per size class k = floor(log2(max(w, h))) (cells of (x1, y1), 2^(k-1)
 *     wide and 2^k high) is built by a second radix sort of (cell, rank); IoU > t bounds the
 *     size ratio and the (x1, y1) offset of a suppressor, so a box looks for its suppressors
 *     only in a few size classes and, in each, in a window of grid rows (about 13 row ranges
 *     per box at t = 0.3; every class at t = 0);
 *   - one persistent kernel resolves greedy: blocks claim chunks of boxes in NMS order; a
 *     box walks its candidate suppressors in order: an overlapping earlier box that is KEPT
 *     suppresses it, one that is still undecided makes it wait (spin) there, and the end of
 *     the walk keeps it (params->lookahead = 1: it walks on past undecided ones for a kept
 *     one and waits only if there is none). A box waits only on earlier boxes, whose chunks
 *     are held by running blocks, so it always terminates. Time grows with the candidates
 *     walked and with the longest chain of boxes that each wait on the previous one
 *     (kernels/nms_emulation.py reports both for a given input).
 * Kept boxes are written as rows [x1, y1, x2, y2, sigmoid(logit)], best first; with
 * score_logit = 1 the fifth value is the float32 logit itself, bit for bit but -0.0 written
 * as +0.0 (ABI 4). The image's pixel area is [b, b + W - 1] x [b, b + H - 1], b = pixel_base
 * (0 for 0-based pixels, 1 for the matconvnet variant's 1-based ones; ABI 5):
 * drop_outside = 1 leaves out the kept boxes lying entirely outside it (touching its border
 * counts as inside), then clip != 0 clips the rest to it, as numpy's clip (min(max(x, lo),
 * hi); NaN stays NaN). The Python runtime passes drop_outside = 1 and its variant's base:
 * the rows are its detections (docs/DESIGN.md, "NMS"). With drop_outside = 0 every kept box
 * is written, and clip != 0 clips one lying outside onto the border.
 * Graph capture: every step is a kernel or a CUB call with host-known sizes (from
 * max_candidates), so a tf_nms call captures and replays; nothing is read back to the host.
 * (The one-block sort's shared-memory limit is set with cudaFuncSetAttribute at each call,
 * a host call that capture allows.)
 * ------------------------------------------------------------------------------------- */

typedef struct tf_nms_params {
  float nms_thresh;       /* in [0, 1] */
  float pixel_offset;     /* >= 0 and finite: 1 for the reference "+1" widths, 0 for none */
  int32_t clip;           /* nonzero: clip the kept boxes to the image */
  int32_t image_height;   /* original image size, each side in [1, TF_MAX_DIM] */
  int32_t image_width;
  int32_t lookahead;      /* resolve rule, 0, 1 or 2 (the same result): 0 = a box waits at
                             the first undecided overlapping box of its walk; 1 = it walks on
                             past undecided ones for a kept one, and waits (on the first
                             undecided one) only if there is none: fewer rounds of waiting,
                             more reads (5x faster than 0 on an H200 at 50k clustered
                             candidates); 2 = one warp per box reads 32 candidates at a
                             time: the fastest there (10k / 50k clustered candidates:
                             417 / 437 us against 659 us / 1.26 ms for 1) and what the
                             Python runtime passes (libraries before it refuse 2) */
  int32_t score_logit;    /* row[4], 0 or 1 (ABI 4): 0 = sigmoid(logit), the probability;
                             1 = the float32 logit itself, exactly (what the references print:
                             a float32 probability rounds to 1 above a logit of about 16.6) */
  float pixel_base;       /* 0 or 1 (ABI 5): the coordinate of the image's first pixel, where
                             drop_outside and clip put the image's pixel area */
  int32_t drop_outside;   /* 0 or 1 (ABI 5): 1 = kept boxes entirely outside the image's pixel
                             area are not written (nor counted in num_kept) */
} tf_nms_params;

#define TF_OVERFLOW_CAPACITY 1u   /* num_candidates > candidate-buffer capacity */
#define TF_OVERFLOW_NMS 2u        /* num_candidates > max_candidates of this tf_nms call */

/* Written by tf_nms to device memory. */
typedef struct tf_nms_stats {
  uint32_t num_kept;        /* rows written to out_boxes (0 when overflow != 0) */
  uint32_t num_candidates;  /* true number of candidates in the buffer (not clamped) */
  uint32_t overflow;        /* TF_OVERFLOW_* bits; nonzero means nothing was suppressed or
                               written: grow (buffer and decode again, or max_candidates and
                               call tf_nms again -- the candidate buffer is left intact) */
  uint32_t nonfinite;       /* NaN / +-inf values in the score maps decoded into the buffer
                               (the header's second counter; ABI 2: `reserved`). Nonzero means
                               the network is broken: the boxes are those of the finite cells
                               only, and the caller should treat the image as failed (no
                               detections), never as an image without faces. */
} tf_nms_stats;

/* Workspace bytes of tf_nms for up to max_candidates candidates, a function of
 * max_candidates only (no second query, no counter download): 69 * max_candidates + 1 MiB
 * (+ alignment): sort keys/values 24 B, boxes + logits 20 B, status 1 B, boxes in grid
 * order 16 B, CUB storage bound 8 B per candidate + 1 MiB. About 45.9 MB at 650,000
 * candidates. */
TINYFACES_API tf_status tf_nms_workspace_size(int64_t max_candidates, size_t* bytes);

/* candidates/capacity: the buffer decoded into (read only), with the capacity it was sized
 * and decoded with (the boxes lie past the keys at an offset that depends on it: another
 * value reads other memory as boxes). out_boxes: device float32 with
 * room for max_candidates rows of 5. out_stats: device tf_nms_stats. Sorting costs time in
 * proportion to max_candidates, the resolve in proportion to the actual count (and the
 * overlap structure, see above). The simplest caller sizes max_candidates = capacity of the
 * candidate buffer once; then TF_OVERFLOW_NMS cannot occur. Before enqueueing anything it
 * asks CUB for its storage sizes (host-side queries that read the device's properties: the
 * first CUDA calls) and returns WORKSPACE_TOO_SMALL ("internal: ...") if one is above the
 * workspace's bound, which the current CUB never is. */
TINYFACES_API tf_status tf_nms(const void* candidates, int64_t capacity, const tf_nms_params* params,
                               int64_t max_candidates, void* workspace, size_t workspace_bytes,
                               float* out_boxes, tf_nms_stats* out_stats, tf_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* TINYFACES_KERNELS_H */
