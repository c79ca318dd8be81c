// The candidate buffer shared by decode (writer) and NMS (reader), and its sort key.
#pragma once

#include "common.cuh"

namespace tf {

// Device layout of a candidate buffer of `capacity` slots, each section kAlign-aligned
// relative to the base: [header: uint32 count, uint32 nonfinite][uint64 keys[capacity]]
// [float4 boxes[capacity]].
constexpr int kNonfiniteWord = 1;  // header word (uint32 index) of the non-finite counter

// The non-finite counter stops growing from here on: it can never wrap around to 0 (a map
// can hold up to 5 * (2^32 - 1) values; the warps between their check and their add are
// far fewer than 2^31 / 160).
constexpr uint32_t kNonfiniteSaturation = 1u << 31;

struct CandidateView {
  uint32_t* count;             // true number of candidates decoded since reset
  uint32_t* nonfinite;         // NaN / +-inf score-map values decoded since reset
  unsigned long long* keys;    // composite sort key per slot (see sort_key)
  float4* boxes;               // x1, y1, x2, y2 per slot
};

inline size_t candidates_bytes(int64_t capacity) {
  const size_t n = static_cast<size_t>(capacity);
  return kAlign + align_up(n * sizeof(unsigned long long)) + align_up(n * sizeof(float4));
}

// Host-side check of a candidate-buffer capacity, shared by decode (writer) and NMS (reader).
inline tf_status check_capacity(int64_t capacity) {
  if (capacity < 1 || capacity > TF_MAX_CAPACITY)
    return fail(TF_STATUS_INVALID_CAPACITY, "capacity = %lld is outside [1, %lld]",
                static_cast<long long>(capacity), static_cast<long long>(TF_MAX_CAPACITY));
  return TF_STATUS_SUCCESS;
}

inline CandidateView candidate_view(void* base, int64_t capacity) {
  const size_t n = static_cast<size_t>(capacity);
  char* p = static_cast<char*>(base);
  CandidateView v;
  v.count = reinterpret_cast<uint32_t*>(p);
  v.nonfinite = v.count + kNonfiniteWord;
  v.keys = reinterpret_cast<unsigned long long*>(p + kAlign);
  v.boxes = reinterpret_cast<float4*>(p + kAlign + align_up(n * sizeof(unsigned long long)));
  return v;
}

// Sorting these keys ascending orders candidates by logit descending, then canonical key
// ascending: the high word is the logit's bits mapped to an unsigned order and inverted,
// the low word the canonical key. -0 is folded into +0 (numpy compares them equal).
__device__ __forceinline__ unsigned long long sort_key(float logit, uint32_t key) {
  if (logit == 0.0f) logit = 0.0f;
  uint32_t bits = __float_as_uint(logit);
  uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(~ascending) << 32) | key;
}

__device__ __forceinline__ float logit_of(unsigned long long sort_key) {
  uint32_t ascending = ~static_cast<uint32_t>(sort_key >> 32);
  uint32_t bits = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  return __uint_as_float(bits);
}

// Pads the sort input past the real candidates; no candidate has this key (it would need
// a NaN logit, and NaN never passes the threshold).
constexpr unsigned long long kSentinelKey = ~0ull;

}  // namespace tf
