// The CUB calls kernels/src makes, on the host: DoubleBuffer, DeviceRadixSort::SortPairs
// (stable, on bits [begin_bit, end_bit) of the key) and DeviceScan::ExclusiveSum. Like CUB
// they answer a size query (temp == NULL), refuse a smaller temporary buffer, and leave the
// sorted data in Current(), which may be either buffer: $TF_CPU_SORT_FLIP=0 keeps it in the
// buffer it came from, anything else (the default) moves it to the other one. What CUB may
// scribble on is scribbled on (0xFF): the whole temporary buffer, and the double buffers'
// other halves, so that a caller relying on them keeping data fails here too.
// $TF_CPU_CUB_EXTRA_BYTES=N makes every storage request N bytes larger (see temp_bytes).
// Like CUB, whose launches return cudaPeekAtLastError(), a call that does its work returns
// the thread's last CUDA error: one left by an earlier failed call fails it.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_runtime.h"

namespace cub {

template <typename T>
struct DoubleBuffer {
  T* d_buffers[2];
  int selector;
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate}, selector(0) {}
  T* Current() { return d_buffers[selector]; }
  T* Alternate() { return d_buffers[selector ^ 1]; }
};

namespace detail {

// Temporary bytes the CPU build asks for: the same order of magnitude as CUB (so that the
// callers' bound checks are exercised), never touched. $TF_CPU_CUB_EXTRA_BYTES adds that
// many bytes to every request: a test asks for more than a caller reserved, as a CUB
// release might.
inline size_t temp_bytes(long long items) {
  const char* extra = std::getenv("TF_CPU_CUB_EXTRA_BYTES");
  return 1024 + 4 * static_cast<size_t>(items) +
         (extra != nullptr ? static_cast<size_t>(std::strtoull(extra, nullptr, 0)) : 0);
}

inline cudaError_t check_temp(void* temp, size_t& bytes, long long items, bool& query) {
  query = temp == nullptr;
  if (query) {
    bytes = temp_bytes(items);
    return cudaSuccess;
  }
  if (bytes < temp_bytes(items) || items < 0) return cudaErrorInvalidValue;
  std::memset(temp, 0xFF, bytes);  // all of it is CUB's
  return cudaSuccess;
}

inline bool flip_buffers() {
  const char* v = std::getenv("TF_CPU_SORT_FLIP");
  return v == nullptr || std::string(v) != "0";
}

}  // namespace detail

struct DeviceRadixSort {
  template <typename Key, typename Value, typename NumItems>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, DoubleBuffer<Key>& keys,
                               DoubleBuffer<Value>& values, NumItems num_items, int begin_bit = 0,
                               int end_bit = sizeof(Key) * 8, cudaStream_t = nullptr) {
    bool query = false;
    const cudaError_t err = detail::check_temp(temp, temp_bytes, num_items, query);
    if (err != cudaSuccess || query) return err;
    if (begin_bit < 0 || end_bit > static_cast<int>(sizeof(Key) * 8) || begin_bit >= end_bit)
      return cudaErrorInvalidValue;
    const size_t n = static_cast<size_t>(num_items);
    const int bits = end_bit - begin_bit;
    const Key mask = bits == static_cast<int>(sizeof(Key) * 8) ? ~Key(0) : ((Key(1) << bits) - 1);
    const Key* k = keys.Current();
    const Value* v = values.Current();
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return ((k[a] >> begin_bit) & mask) < ((k[b] >> begin_bit) & mask);
    });
    std::vector<Key> sorted_keys(n);
    std::vector<Value> sorted_values(n);
    for (size_t i = 0; i < n; ++i) {
      sorted_keys[i] = k[order[i]];
      sorted_values[i] = v[order[i]];
    }
    if (detail::flip_buffers()) {
      keys.selector ^= 1;
      values.selector ^= 1;
    }
    std::copy(sorted_keys.begin(), sorted_keys.end(), keys.Current());
    std::copy(sorted_values.begin(), sorted_values.end(), values.Current());
    std::memset(keys.Alternate(), 0xFF, n * sizeof(Key));
    std::memset(values.Alternate(), 0xFF, n * sizeof(Value));
    return cudaPeekAtLastError();
  }
};

struct DeviceScan {
  template <typename In, typename Out, typename NumItems>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, NumItems num_items,
                                  cudaStream_t = nullptr) {
    bool query = false;
    const cudaError_t err = detail::check_temp(temp, temp_bytes, num_items, query);
    if (err != cudaSuccess || query) return err;
    using T = typename std::remove_cv<typename std::remove_reference<decltype(*out)>::type>::type;
    T sum = T(0);
    for (long long i = 0; i < static_cast<long long>(num_items); ++i) {
      const T v = static_cast<T>(in[i]);
      out[i] = sum;
      sum = static_cast<T>(sum + v);
    }
    return cudaPeekAtLastError();
  }
};

}  // namespace cub
