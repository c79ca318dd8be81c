// One-block radix sort of a small NMS's keys in shared memory, giving their order: all of a
// sort in one launch, in place, where CUB's device-wide sort takes a histogram kernel and one
// kernel and one memset per 8 bits (NMS's two sorts: about 30 launches, each a few blocks at
// these sizes). LSD, 8-bit digits, stable (as CUB's), of the first *count items only (the
// padding past them stays where it is).
//
// Each pass ranks the items within their warp (a warp holds 32 * ceil(n / 512) consecutive
// items, taken 32 at a time in index order: __match_any_sync groups the lanes of one digit, and
// a per-warp count per digit gives each its place), then a block-wide exclusive sum over
// (digit, warp) turns those places into positions, and the order moves there.
#pragma once

#include "common.cuh"

namespace tf {

constexpr int kBlockSortThreads = 512;
constexpr int kBlockSortItems = 32;  // per thread
constexpr uint32_t kBlockSortMax = kBlockSortThreads * kBlockSortItems;  // 16384 items
constexpr int kBlockSortWarps = kBlockSortThreads / 32;
constexpr int kBlockSortRadix = 256;

// Dynamic shared memory of block_sort_kernel<Key>: the keys (which stay where they are), the
// order being sorted, a count per (warp, digit) and the warps' sums: 213,120 bytes for 64-bit
// keys, 147,584 for 32-bit ones (a GPU of compute capability 9.0 gives a block up to 232,448;
// 8.0 only 166,912: the caller checks).
template <typename Key>
constexpr size_t block_sort_shared_bytes() {
  return kBlockSortMax * (sizeof(Key) + sizeof(uint32_t)) +
         (kBlockSortWarps * kBlockSortRadix + 32) * sizeof(uint32_t);
}

__device__ __forceinline__ uint32_t block_sort_warp_inclusive_sum(uint32_t v, unsigned lane) {
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t t = __shfl_sync(0xffffffffu, v, lane >= static_cast<unsigned>(o) ? lane - o : lane);
    if (lane >= static_cast<unsigned>(o)) v += t;
  }
  return v;
}

// Sorts keys[0, *count) ascending on bits [0, end_bit), stably, and writes order[i] = the
// position the key now at i came from (what CUB's SortPairs gives with values 0, 1, 2, ...).
// *count <= kBlockSortMax (more are not sorted). One block of kBlockSortThreads threads,
// block_sort_shared_bytes<Key>() of dynamic shared memory. The keys stay in place in shared
// memory; each pass moves only the order (32 bits an item: registers enough, no spills). The
// items are spread over all warps (ceil(n / 512) steps of 32 each), and each pass loads a
// warp's items' order and digit before the serial ranking, so those loads overlap.
template <typename Key>
__global__ void __launch_bounds__(kBlockSortThreads)
    block_sort_kernel(const uint32_t* __restrict__ count, Key* keys, uint32_t* order, int end_bit) {
  TF_DYNAMIC_SHARED(unsigned char, shared);
  Key* skeys = reinterpret_cast<Key*>(shared);
  uint32_t* sorder = reinterpret_cast<uint32_t*>(shared + kBlockSortMax * sizeof(Key));
  uint32_t* digit_counts = sorder + kBlockSortMax;  // [warp][digit]; after the sum: positions
  uint32_t* warp_sums = digit_counts + kBlockSortWarps * kBlockSortRadix;
  const uint32_t n = min(*count, kBlockSortMax);
  const unsigned tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
  for (uint32_t i = tid; i < n; i += kBlockSortThreads) {
    skeys[i] = keys[i];
    sorder[i] = i;
  }
  const uint32_t steps = (n + kBlockSortThreads - 1) / kBlockSortThreads;  // per warp, <= 32
  const uint32_t first = warp * 32u * steps;  // this warp's items: first + j*32 + lane, j < steps
  for (int shift = 0; shift < end_bit; shift += 8) {
    __syncwarp();  // this warp's lanes are done with its counts (the previous pass's moves)
    for (int d = lane; d < kBlockSortRadix; d += 32) digit_counts[warp * kBlockSortRadix + d] = 0;
    __syncthreads();  // the loads (first pass) and the previous pass's moves are done
    // this warp's items: where each comes from (kept for the move) and its digit (read from
    // the 32-bit half of the key holding it), four digits a register
    uint32_t moved[kBlockSortItems], digits[kBlockSortItems / 4];
    const uint32_t* words = reinterpret_cast<const uint32_t*>(skeys);
    constexpr unsigned kWords = sizeof(Key) / 4;
    const unsigned half = kWords == 2 && shift >= 32 ? 1u : 0u, sh = shift & 31;
#pragma unroll
    for (int j = 0; j < kBlockSortItems; ++j) {
      const uint32_t i = first + j * 32u + lane;
      uint32_t d = 0x100u;
      if (static_cast<uint32_t>(j) < steps && i < n) {
        moved[j] = sorder[i];
        d = (words[moved[j] * kWords + half] >> sh) & 0xffu;
      }
      if (j % 4 == 0) digits[j / 4] = 0;
      digits[j / 4] |= (d & 0xffu) << (8 * (j % 4));
    }
    // rank within the warp: each item's place among the warp's items of its digit, two
    // 16-bit places a register
    uint32_t places[kBlockSortItems / 2];
#pragma unroll
    for (int j = 0; j < kBlockSortItems; ++j) {
      if (static_cast<uint32_t>(j) >= steps || first + j * 32u >= n) break;  // warp-uniform
      const uint32_t i = first + j * 32u + lane;
      const bool valid = i < n;
      const uint32_t d = valid ? (digits[j / 4] >> (8 * (j % 4))) & 0xffu : 0x100u;
      const unsigned peers = __match_any_sync(0xffffffffu, d);
      const uint32_t before = valid ? digit_counts[warp * kBlockSortRadix + d] : 0u;
      __syncwarp();
      if (valid && lane == static_cast<unsigned>(__ffs(peers) - 1))
        digit_counts[warp * kBlockSortRadix + d] = before + static_cast<uint32_t>(__popc(peers));
      __syncwarp();
      const uint32_t place = before + static_cast<uint32_t>(__popc(peers & ((1u << lane) - 1u)));
      places[j / 2] = j % 2 == 0 ? place : places[j / 2] | (place << 16);
    }
    __syncthreads();
    // exclusive sum in (digit, warp) order: thread t sums entries 8t .. 8t+7 of that order
    constexpr int kPerThread = kBlockSortWarps * kBlockSortRadix / kBlockSortThreads;
    uint32_t entries[kPerThread], sum = 0;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const unsigned e = tid * kPerThread + k, d = e / kBlockSortWarps, w = e % kBlockSortWarps;
      entries[k] = digit_counts[w * kBlockSortRadix + d];
      sum += entries[k];
    }
    const uint32_t inclusive = block_sort_warp_inclusive_sum(sum, lane);
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      const uint32_t total = lane < kBlockSortWarps ? warp_sums[lane] : 0u;
      const uint32_t before_warps = block_sort_warp_inclusive_sum(total, lane) - total;
      if (lane < kBlockSortWarps) warp_sums[lane] = before_warps;
    }
    __syncthreads();
    uint32_t position = warp_sums[warp] + inclusive - sum;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const unsigned e = tid * kPerThread + k, d = e / kBlockSortWarps, w = e % kBlockSortWarps;
      digit_counts[w * kBlockSortRadix + d] = position;
      position += entries[k];
    }
    __syncthreads();  // the positions written (every order was read before the sum)
    // the destinations first (loads only; over the places, < 16384 too), then the stores
#pragma unroll
    for (int j = 0; j < kBlockSortItems; ++j) {
      const uint32_t i = first + j * 32u + lane;
      if (static_cast<uint32_t>(j) < steps && i < n) {
        const uint32_t d = (digits[j / 4] >> (8 * (j % 4))) & 0xffu;
        const uint32_t dest = digit_counts[warp * kBlockSortRadix + d] +
                              ((places[j / 2] >> (16 * (j % 2))) & 0xffffu);
        places[j / 2] = j % 2 == 0 ? (places[j / 2] & 0xffff0000u) | dest
                                   : (places[j / 2] & 0xffffu) | (dest << 16);
      }
    }
#pragma unroll
    for (int j = 0; j < kBlockSortItems; ++j) {
      const uint32_t i = first + j * 32u + lane;
      if (static_cast<uint32_t>(j) < steps && i < n)
        sorder[(places[j / 2] >> (16 * (j % 2))) & 0xffffu] = moved[j];
    }
  }
  __syncthreads();
  for (uint32_t i = tid; i < n; i += kBlockSortThreads) {
    const uint32_t from = sorder[i];
    order[i] = from;
    keys[i] = skeys[from];
  }
}

}  // namespace tf
