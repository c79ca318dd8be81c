/*
 * decode_nms_demo.c -- embedding the Tiny Faces decode + NMS kernels from plain C.
 *
 * Fills one level's (1,125,h,w) score map on the host with a deterministic pattern (a few
 * strong cells, some weaker neighbours, everything else below threshold), uploads it, then
 * on one stream: resets the candidate buffer, decodes the level, sorts + suppresses, and
 * copies the (N,5) result back. Prints the boxes. Exits non-zero with the error text when
 * something fails (for example when there is no GPU).
 *
 *   make -C kernels && kernels/build/decode_nms_demo
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinyfaces_kernels.h"

enum { MAP_H = 24, MAP_W = 32, CAPACITY = 4096, MAX_NMS = 1024 };

static void report_tf(const char* what, tf_status status) {
  fprintf(stderr, "decode_nms_demo: %s failed: %s (%s)\n", what, tf_status_string(status),
          tf_last_error_message());
}

static void report_cuda(const char* what, cudaError_t err) {
  fprintf(stderr, "decode_nms_demo: %s failed: %s\n", what, cudaGetErrorString(err));
}

/* On failure: print, then release everything through run()'s `cleanup:` (rc stays 1). */
#define TF_CHECK(call)                                                     \
  do {                                                                     \
    tf_status s_ = (call);                                                 \
    if (s_ != TF_STATUS_SUCCESS) { report_tf(#call, s_); goto cleanup; }   \
  } while (0)
#define CUDA_CHECK(call)                                                   \
  do {                                                                     \
    cudaError_t e_ = (call);                                               \
    if (e_ != cudaSuccess) { report_cuda(#call, e_); goto cleanup; }       \
  } while (0)

/* Deterministic score map: cls logits strongly positive on a sparse lattice, mildly
 * positive next to it (overlapping boxes that NMS removes), -5 elsewhere; small offsets. */
static void fill_score_map(float* map) {
  const size_t plane = (size_t)MAP_H * MAP_W;
  for (int c = 0; c < TF_NUM_CHANNELS; ++c) {
    for (int y = 0; y < MAP_H; ++y) {
      for (int x = 0; x < MAP_W; ++x) {
        float v;
        if (c < TF_NUM_TEMPLATES) {
          const int on_lattice = (x % 8 == 3) && (y % 6 == 2) && (c == 4 + (x + y) % 8);
          const int next_to = (x % 8 == 4) && (y % 6 == 2) && (c == 4 + (x - 1 + y) % 8);
          v = on_lattice ? 2.0f + 0.01f * (float)(x + y) : next_to ? 0.5f : -5.0f;
        } else {
          v = 0.05f * sinf(0.7f * (float)c + 0.3f * (float)x - 0.2f * (float)y);
        }
        map[(size_t)c * plane + (size_t)y * MAP_W + x] = v;
      }
    }
  }
}

static int run(void) {
  int rc = 1;
  /* Everything run() acquires, NULL until it is: `cleanup:` releases whatever is set. */
  float* host_map = NULL;
  float* host_out = NULL;
  cudaStream_t stream = NULL;
  float* d_map = NULL;
  float* d_out = NULL;
  void* d_cand = NULL;
  void* d_ws = NULL;
  tf_nms_stats* d_stats = NULL;
  /* Declared before the first `goto cleanup`, which C++ does not let jump over them. */
  int devices = 0;
  tf_decode_params dp;
  /* thresh, pixel offset, clip, image height and width, lookahead, score_logit (0: row[4] is
   * the probability sigmoid(logit); 1: the logit itself, as the references print it),
   * pixel_base (0: 0-based pixels), drop_outside (1: boxes entirely outside the image are
   * not written): the Python runtime's rows */
  tf_nms_params np = {0.3f, 1.0f, 1, 190, 250, 0, 0, 0.0f, 1};
  const size_t map_floats = (size_t)TF_NUM_CHANNELS * MAP_H * MAP_W;
  size_t cand_bytes = 0, ws_bytes = 0;
  tf_nms_stats stats;

  /* First: this program and the library agree on the ABI (version and struct sizes). */
  TF_CHECK(tf_check_abi(TF_KERNELS_ABI_VERSION, sizeof(tf_decode_params),
                        sizeof(tf_nms_params), sizeof(tf_nms_stats)));
  TF_CHECK(tf_get_device_count(&devices));
  if (devices == 0) {
    fprintf(stderr, "decode_nms_demo: no CUDA device found\n");
    goto cleanup;
  }

  /* One level at scale 1 of a 190x250 image (score map = ceil(size / 8)). */
  memset(&dp, 0, sizeof dp);
  for (int c = 0; c < TF_NUM_TEMPLATES; ++c) {
    const float half = 6.0f + 2.0f * (float)c;  /* templates grow with c */
    dp.templates[c][0] = -half;
    dp.templates[c][1] = -1.2f * half;
    dp.templates[c][2] = half;
    dp.templates[c][3] = 1.2f * half;
  }
  dp.active_mask = 0xFF0u; /* templates 4..11 (type A) */
  dp.logit_thresh = 0.0f;  /* prob > 0.5 */
  dp.stride = 8.0f;
  dp.offset = -1.0f;
  dp.scale = 1.0f;

  host_map = (float*)malloc(map_floats * sizeof(float));
  host_out = (float*)malloc((size_t)MAX_NMS * 5 * sizeof(float));
  if (!host_map || !host_out) {
    fprintf(stderr, "decode_nms_demo: out of host memory\n");
    goto cleanup;
  }
  fill_score_map(host_map);

  TF_CHECK(tf_candidates_size(CAPACITY, &cand_bytes));
  TF_CHECK(tf_nms_workspace_size(MAX_NMS, &ws_bytes));
  printf("candidate buffer %zu bytes, NMS workspace %zu bytes\n", cand_bytes, ws_bytes);

  CUDA_CHECK(cudaStreamCreate(&stream));
  CUDA_CHECK(cudaMalloc((void**)&d_map, map_floats * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_cand, cand_bytes));
  CUDA_CHECK(cudaMalloc(&d_ws, ws_bytes));
  CUDA_CHECK(cudaMalloc((void**)&d_out, (size_t)MAX_NMS * 5 * sizeof(float)));
  CUDA_CHECK(cudaMalloc((void**)&d_stats, sizeof(tf_nms_stats)));

  /* The hot path: no allocation, no synchronisation until the final copy. */
  CUDA_CHECK(cudaMemcpyAsync(d_map, host_map, map_floats * sizeof(float),
                             cudaMemcpyHostToDevice, stream));
  TF_CHECK(tf_candidates_reset(d_cand, stream));
  TF_CHECK(tf_decode_level(d_map, MAP_H, MAP_W, &dp, 0, d_cand, CAPACITY, stream));
  TF_CHECK(tf_nms(d_cand, CAPACITY, &np, MAX_NMS, d_ws, ws_bytes, d_out, d_stats, stream));

  CUDA_CHECK(cudaMemcpyAsync(&stats, d_stats, sizeof stats, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  if (stats.nonfinite) { /* a broken network: a failed image, never "no faces" */
    fprintf(stderr, "decode_nms_demo: the score map held %u NaN or infinite values; "
            "no detections for this image\n", stats.nonfinite);
    goto cleanup;
  }
  if (stats.overflow) {
    fprintf(stderr, "decode_nms_demo: %u candidates overflow the buffers (flags %u)\n",
            stats.num_candidates, stats.overflow);
    goto cleanup;
  }
  CUDA_CHECK(cudaMemcpy(host_out, d_out, (size_t)stats.num_kept * 5 * sizeof(float),
                        cudaMemcpyDeviceToHost));

  printf("%u candidates, %u kept\n", stats.num_candidates, stats.num_kept);
  for (uint32_t i = 0; i < stats.num_kept; ++i) {
    const float* r = host_out + 5 * (size_t)i;
    printf("%3u: [%8.2f %8.2f %8.2f %8.2f] p=%.4f\n", i, r[0], r[1], r[2], r[3], r[4]);
  }
  rc = 0;

cleanup: /* every path ends here; cudaFree(NULL) and free(NULL) do nothing */
  cudaFree(d_map);
  cudaFree(d_cand);
  cudaFree(d_ws);
  cudaFree(d_out);
  cudaFree(d_stats);
  if (stream) cudaStreamDestroy(stream);
  free(host_map);
  free(host_out);
  return rc;
}

int main(void) { return run(); }
