// Runs CUDA kernels on the CPU: every CUDA thread of a launch is a fiber (ucontext), all on
// the calling OS thread. A few blocks are resident at a time (the next one starts when one
// ends, in block order, as on a GPU); fibers switch only where CUDA threads wait for each
// other: __syncthreads / __syncthreads_or and the warp collectives (__ballot_sync,
// __shfl_sync), which are real barriers over the block's / warp's live threads. So code that
// waits for another thread without a barrier (a bare spin loop) hangs here; the kernels of
// this library do not. Misuse that a GPU would not report either (a collective whose mask is
// not the warp's live lanes, a shuffle from a lane that did not take part) and a deadlock
// fail the launch with cudaErrorLaunchFailure and a message.
//
// Environment: TF_CPU_RESIDENT_BLOCKS (default 4, at most 16) blocks interleave; TF_CPU_SCHEDULE_SEED
// picks the next runnable fiber at random (seeded) instead of in turn; TF_CPU_STACK_KIB
// (default 256) per fiber.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define TF_CPU_ASAN 1
#else
#define TF_CPU_ASAN 0
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace tfcpu {
namespace {

struct Fiber;

// Threads of a block (or lanes of a warp) that have not exited; a barrier completes when
// all of them have arrived (an exiting thread stops being waited for, as on Volta and later).
struct Barrier {
  unsigned expected = 0;
  unsigned arrived = 0;
  std::vector<Fiber*> waiting;
};

struct Warp {
  Barrier barrier;
  unsigned live_mask = 0;
  unsigned arrived_mask = 0;
  unsigned mask = 0;           // the collective's mask (as the last lane to arrive gave it)
  unsigned values[32] = {};
  unsigned snapshot[32] = {};  // values of the last completed collective
  unsigned snapshot_mask = 0;  // lanes that took part in it
};

struct Block {
  uint3 idx{};
  unsigned live = 0;
  Barrier barrier;
  int or_accumulator = 0;
  int or_result = 0;
  std::vector<Warp> warps;
  std::unordered_map<const void*, std::vector<unsigned char>> shared;
  std::vector<unsigned char> dynamic_shared;
};

struct Fiber {
  ucontext_t context;
  Block* block = nullptr;
  uint3 thread_idx{};
  unsigned lane = 0;
  unsigned warp = 0;
  bool done = false;
  char* stack = nullptr;
  size_t stack_bytes = 0;
  void* asan_fake_stack = nullptr;
};

struct Grid {
  dim3 grid, block;
  unsigned threads = 0;
  size_t dynamic_shared_bytes = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Block> slots;
  std::vector<std::vector<Fiber>> fibers;  // per slot, one per thread
  std::deque<Fiber*> ready;
  bool random = false;
  std::mt19937_64 rng;
  unsigned long long next_block = 0, total_blocks = 0;
  std::string error;  // the first misuse seen
  ucontext_t scheduler{};  // ASan's swapcontext reads uc_stack: keep it zeroed
  Fiber* current = nullptr;
  const void* scheduler_stack = nullptr;  // ASan: the scheduler's stack, learnt at first switch
  size_t scheduler_stack_bytes = 0;
};

thread_local Grid* g_grid = nullptr;
thread_local std::string g_launch_error;
thread_local cudaError_t g_last_error = cudaSuccess;  // cudaGetLastError / cudaPeekAtLastError

// Returns `err`, recording a failure as the thread's last error (as the CUDA runtime does).
cudaError_t record(cudaError_t err) {
  if (err != cudaSuccess) g_last_error = err;
  return err;
}

// --- fiber stacks (reused across launches; a guard page below each) ---------------------------

struct Stack {
  char* base;  // mapping start (the guard page)
  size_t bytes;
};
thread_local std::vector<Stack> g_stacks;

size_t env_size(const char* name, size_t fallback, size_t lo, size_t hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  if (*end != '\0' || n < lo || n > hi) return fallback;
  return static_cast<size_t>(n);
}

bool stacks_for(size_t count, size_t stack_bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t bytes = (stack_bytes + page - 1) / page * page + page;
  if (!g_stacks.empty() && g_stacks[0].bytes != bytes) {
    for (Stack& s : g_stacks) munmap(s.base, s.bytes);
    g_stacks.clear();
  }
  while (g_stacks.size() < count) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return false;
    if (mprotect(p, page, PROT_NONE) != 0) {
      munmap(p, bytes);
      return false;
    }
    g_stacks.push_back(Stack{static_cast<char*>(p), bytes});
  }
  return true;
}

// --- switching ----------------------------------------------------------------------------------

void set_builtins(const Grid& g, const Fiber& f) {
  threadIdx = f.thread_idx;
  blockIdx = f.block->idx;
  blockDim = g.block;
  gridDim = g.grid;
}

// Fiber -> scheduler (the fiber resumes when a barrier it waits at completes).
void suspend(Grid& g, Fiber& f) {
#if TF_CPU_ASAN
  __sanitizer_start_switch_fiber(&f.asan_fake_stack, g.scheduler_stack, g.scheduler_stack_bytes);
#endif
  swapcontext(&f.context, &g.scheduler);
#if TF_CPU_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, nullptr, nullptr);
#endif
}

void fiber_entry() {
  Grid& g = *g_grid;
  Fiber& f = *g.current;
#if TF_CPU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.scheduler_stack, &g.scheduler_stack_bytes);
#endif
  (*g.body)();
  f.done = true;
#if TF_CPU_ASAN
  __sanitizer_start_switch_fiber(nullptr, g.scheduler_stack, g.scheduler_stack_bytes);
#endif
  // returning resumes uc_link: the scheduler
}

void fail_launch(Grid& g, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void fail_launch(Grid& g, const char* fmt, ...) {
  if (!g.error.empty()) return;
  char text[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  g.error = text;
}

// --- blocks -------------------------------------------------------------------------------------

void release(Grid& g, Barrier& b) {
  b.arrived = 0;
  for (Fiber* f : b.waiting) g.ready.push_back(f);
  b.waiting.clear();
}

void complete_block_barrier(Grid& g, Block& b) {
  b.or_result = b.or_accumulator;
  b.or_accumulator = 0;
  release(g, b.barrier);
}

void complete_warp_barrier(Grid& g, Warp& w) {
  if ((w.mask & w.live_mask) != w.arrived_mask)
    fail_launch(g, "a warp collective with mask 0x%08x completed with lanes 0x%08x (live 0x%08x)",
                w.mask, w.arrived_mask, w.live_mask);
  for (int l = 0; l < 32; ++l) w.snapshot[l] = w.values[l];
  w.snapshot_mask = w.arrived_mask;
  w.arrived_mask = 0;
  release(g, w.barrier);
}

// Arrival at `owner`'s barrier (a Block or a Warp): the last live thread completes it, the
// others wait until then.
template <typename Owner>
void arrive_and_wait(Grid& g, Fiber& f, Owner& owner, void (*complete)(Grid&, Owner&)) {
  Barrier& bar = owner.barrier;
  if (++bar.arrived == bar.expected) {
    complete(g, owner);
  } else {
    bar.waiting.push_back(&f);
    suspend(g, f);
  }
}

// A thread of `owner` exited: it is no longer waited for, which may complete the barrier.
template <typename Owner>
void leave(Grid& g, Owner& owner, void (*complete)(Grid&, Owner&)) {
  Barrier& bar = owner.barrier;
  if (--bar.expected > 0 && bar.arrived == bar.expected) complete(g, owner);
}

void start_block(Grid& g, size_t slot) {
  const unsigned long long linear = g.next_block++;
  Block& b = g.slots[slot];
  b.idx = uint3{static_cast<unsigned>(linear % g.grid.x),
                static_cast<unsigned>(linear / g.grid.x % g.grid.y),
                static_cast<unsigned>(linear / g.grid.x / g.grid.y)};
  b.live = g.threads;
  b.barrier = Barrier{};
  b.barrier.expected = g.threads;
  b.or_accumulator = b.or_result = 0;
  b.shared.clear();
  b.dynamic_shared.assign(g.dynamic_shared_bytes, 0xFF);  // garbage, as on a GPU
  b.warps.assign((g.threads + 31) / 32, Warp{});
  for (unsigned w = 0; w < b.warps.size(); ++w) {
    const unsigned lanes = std::min(32u, g.threads - 32 * w);
    b.warps[w].barrier.expected = lanes;
    b.warps[w].live_mask = lanes == 32 ? ~0u : ((1u << lanes) - 1u);
  }
  for (unsigned t = 0; t < g.threads; ++t) {
    Fiber& f = g.fibers[slot][t];
    f.block = &b;
    f.thread_idx = uint3{t % g.block.x, t / g.block.x % g.block.y, t / g.block.x / g.block.y};
    f.warp = t / 32;
    f.lane = t % 32;
    f.done = false;
    f.asan_fake_stack = nullptr;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = f.stack_bytes;
    f.context.uc_link = &g.scheduler;
    makecontext(&f.context, fiber_entry, 0);
    g.ready.push_back(&f);
  }
}

void thread_exited(Grid& g, Fiber& f, size_t slot) {
  Block& b = *f.block;
  Warp& w = b.warps[f.warp];
  w.live_mask &= ~(1u << f.lane);
  w.values[f.lane] = 0;
  leave(g, w, complete_warp_barrier);
  leave(g, b, complete_block_barrier);
  if (--b.live == 0 && g.next_block < g.total_blocks) start_block(g, slot);
}

Fiber* pick(Grid& g) {
  size_t i = 0;
  if (g.random) i = static_cast<size_t>(g.rng() % g.ready.size());
  Fiber* f = g.ready[i];
  g.ready.erase(g.ready.begin() + static_cast<std::ptrdiff_t>(i));
  return f;
}

unsigned warp_exchange(unsigned mask, unsigned value, const char* what) {
  Grid& g = *g_grid;
  Fiber& f = *g.current;
  Warp& w = f.block->warps[f.warp];
  // Every live lane must take part (the stand-in has one barrier per warp); lanes that have
  // exited may be named, as in CUDA.
  if ((mask & w.live_mask) != w.live_mask || !(mask >> f.lane & 1u))
    fail_launch(g, "%s with mask 0x%08x in a warp whose live lanes are 0x%08x (block %u, thread %u)",
                what, mask, w.live_mask, f.block->idx.x, f.thread_idx.x);
  w.mask = mask;
  w.values[f.lane] = value;
  w.arrived_mask |= 1u << f.lane;
  arrive_and_wait(g, f, w, complete_warp_barrier);
  return w.snapshot_mask;
}

}  // namespace

namespace {

cudaError_t run_grid_unrecorded(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                                const std::function<void()>& thread_body,
                                size_t max_dynamic_shared) {
  g_launch_error.clear();
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 ||
      grid.y > 65535 || grid.z > 65535 || block.z > 64 ||
      dynamic_shared_bytes > std::max<size_t>(48 * 1024, max_dynamic_shared)) {
    g_launch_error = "invalid launch configuration";
    return cudaErrorInvalidConfiguration;
  }
  if (g_grid != nullptr) {
    g_launch_error = "a kernel launched from inside a kernel";
    return cudaErrorLaunchFailure;
  }
  Grid g;
  g.grid = grid;
  g.block = block;
  g.threads = static_cast<unsigned>(threads);
  g.dynamic_shared_bytes = dynamic_shared_bytes;
  g.body = &thread_body;
  g.total_blocks = 1ull * grid.x * grid.y * grid.z;
  const char* seed = std::getenv("TF_CPU_SCHEDULE_SEED");
  if (seed != nullptr && *seed != '\0') {
    g.random = true;
    g.rng.seed(std::strtoull(seed, nullptr, 10));
  }
  const size_t resident = std::min<unsigned long long>(
      env_size("TF_CPU_RESIDENT_BLOCKS", 4, 1, 16), g.total_blocks);
  const size_t stack_bytes = env_size("TF_CPU_STACK_KIB", 256, 16, 65536) * 1024;
  if (!stacks_for(resident * g.threads, stack_bytes)) {
    g_launch_error = "cannot map the fibers' stacks";
    return cudaErrorMemoryAllocation;
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  g.slots.resize(resident);
  g.fibers.resize(resident);
  for (size_t s = 0; s < resident; ++s) {
    g.fibers[s].resize(g.threads);
    for (unsigned t = 0; t < g.threads; ++t) {
      const Stack& st = g_stacks[s * g.threads + t];
      g.fibers[s][t].stack = st.base + page;
      g.fibers[s][t].stack_bytes = st.bytes - page;
    }
  }
  g_grid = &g;
  for (size_t s = 0; s < resident; ++s) start_block(g, s);
  while (!g.ready.empty()) {
    Fiber* f = pick(g);
    set_builtins(g, *f);
    g.current = f;
#if TF_CPU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_bytes);
#endif
    swapcontext(&g.scheduler, &f->context);
#if TF_CPU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    if (f->done) thread_exited(g, *f, static_cast<size_t>(f->block - g.slots.data()));
  }
  g_grid = nullptr;
  unsigned stuck = 0;
  for (const Block& b : g.slots) stuck += b.live;
  if (stuck > 0)
    fail_launch(g, "deadlock: %u threads wait at a barrier or warp collective that cannot complete",
                stuck);
  if (g.error.empty() && g.next_block < g.total_blocks)
    fail_launch(g, "internal: %llu blocks never started", g.total_blocks - g.next_block);
  if (!g.error.empty()) {
    g_launch_error = g.error;
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

}  // namespace

thread_local unsigned long long g_launches = 0;  // kernels this thread ran (configuration accepted)

cudaError_t run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                     const std::function<void()>& thread_body, size_t max_dynamic_shared) {
  const cudaError_t err = run_grid_unrecorded(grid, block, dynamic_shared_bytes, thread_body,
                                              max_dynamic_shared);
  if (err != cudaErrorInvalidConfiguration) ++g_launches;
  return record(err);
}

void* dynamic_shared_bytes() { return g_grid->current->block->dynamic_shared.data(); }

namespace {
std::mutex g_attributes_mutex;
std::unordered_map<const void*, size_t> g_max_dynamic_shared;  // per kernel (all threads)

// A block's most dynamic shared memory: by default an A100's (compute capability 8.0), on
// which NMS sorts with CUB (std::stable_sort here: the one-block sort's 512 fibers per launch
// are slow on the CPU); $TF_CPU_SHARED_OPTIN_BYTES=232448 plays an H100 (unparsable: the default).
int shared_optin_bytes() {
  return static_cast<int>(env_size("TF_CPU_SHARED_OPTIN_BYTES", 166912, 0, 1 << 30));
}
}  // namespace

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  g_launch_error.clear();
  if (bytes < 0 || bytes > shared_optin_bytes()) {  // (-1: an attribute the CPU build lacks)
    g_launch_error = "cudaFuncSetAttribute: an attribute other than the dynamic shared memory "
                     "limit, or more of it than the device has";
    return record(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(g_attributes_mutex);
  g_max_dynamic_shared[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

size_t max_dynamic_shared(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attributes_mutex);
  const auto it = g_max_dynamic_shared.find(kernel);
  return it == g_max_dynamic_shared.end() ? 0 : it->second;
}

void* block_shared_bytes(const void* tag, size_t bytes) {
  Grid& g = *g_grid;
  std::vector<unsigned char>& storage = g.current->block->shared[tag];
  if (storage.empty()) storage.assign(bytes, 0xFF);  // garbage, as uninitialised shared memory
  return storage.data();
}

}  // namespace tfcpu

// --- device functions -----------------------------------------------------------------------------

void __syncthreads() { __syncthreads_or(0); }

int __syncthreads_or(int predicate) {
  using namespace tfcpu;
  Grid& g = *g_grid;
  Fiber& f = *g.current;
  Block& b = *f.block;
  b.or_accumulator |= predicate != 0;
  arrive_and_wait(g, f, b, complete_block_barrier);
  return b.or_result;
}

unsigned int __ballot_sync(unsigned int mask, int predicate) {
  using namespace tfcpu;
  const unsigned took_part = warp_exchange(mask, predicate != 0, "__ballot_sync");
  const Warp& w = g_grid->current->block->warps[g_grid->current->warp];
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((took_part >> l & 1u) && w.snapshot[l]) ballot |= 1u << l;
  return ballot & mask;
}

unsigned int __match_any_sync(unsigned int mask, unsigned int value) {
  using namespace tfcpu;
  const unsigned took_part = warp_exchange(mask, value, "__match_any_sync");
  const Warp& w = g_grid->current->block->warps[g_grid->current->warp];
  unsigned peers = 0;
  for (int l = 0; l < 32; ++l)
    if ((took_part >> l & 1u) && w.snapshot[l] == value) peers |= 1u << l;
  return peers & mask;
}

void __syncwarp(unsigned int mask) {
  (void)tfcpu::warp_exchange(mask, 0, "__syncwarp");
}

unsigned int tf_cpu_shfl_u32(unsigned int mask, unsigned int value, int src_lane) {
  using namespace tfcpu;
  const unsigned took_part = warp_exchange(mask, value, "__shfl_sync");
  Grid& g = *g_grid;
  const Warp& w = g.current->block->warps[g.current->warp];
  const int src = src_lane & 31;
  if (!(took_part >> src & 1u))
    fail_launch(g, "__shfl_sync from lane %d, which did not take part", src);
  return w.snapshot[src];
}

// --- runtime API ----------------------------------------------------------------------------------

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
  static thread_local std::string text;
  text = err == cudaSuccess ? "no error" : "CPU build of the kernels";
  if (!tfcpu::g_launch_error.empty() && err != cudaSuccess) text += ": " + tfcpu::g_launch_error;
  return text.c_str();
}

cudaError_t cudaGetLastError() {
  const cudaError_t err = tfcpu::g_last_error;
  tfcpu::g_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return tfcpu::g_last_error; }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 0;  // the CPU build drives no GPU
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return tfcpu::record(cudaErrorInvalidValue);
  *value = tfcpu::shared_optin_bytes();
  return cudaSuccess;
}

// $TF_CPU_FAIL_MEMSET (set, not empty) makes it fail with cudaErrorInvalidValue, writing
// nothing, as the CUDA runtime refuses a pointer it does not know: a failed CUDA call that
// leaves no sticky state, only the thread's last error.
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  tfcpu::g_launch_error.clear();
  const char* fail = std::getenv("TF_CPU_FAIL_MEMSET");
  if (fail != nullptr && *fail != '\0') {
    tfcpu::g_launch_error = "TF_CPU_FAIL_MEMSET is set";
    return tfcpu::record(cudaErrorInvalidValue);
  }
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

// Kernels the calling thread has launched through this library (tests see which kernels a
// call ran).
extern "C" __attribute__((visibility("default"))) unsigned long long tf_cpu_launches(void) {
  return tfcpu::g_launches;
}
