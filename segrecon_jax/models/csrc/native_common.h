// What the project's native CPU kernels share: the vector type and its loads, and how work items are spread over
// XLA's intra-op thread pool. Included by conv_weight_grad.cc and conv_forward.cc (segrecon_jax/models/native.py
// builds both into one library, its cache key covering this header too).

#ifndef SEGRECON_JAX_MODELS_CSRC_NATIVE_COMMON_H_
#define SEGRECON_JAX_MODELS_CSRC_NATIVE_COMMON_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace segrecon_native {

#if defined(__AVX512F__)
constexpr int kLanes = 16;      // floats per vector register
constexpr int kMaxVectors = 4;  // vectors of output channels per register block
#else
constexpr int kLanes = 8;
constexpr int kMaxVectors = 2;
#endif

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void StoreVec(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// One float in every lane, loaded straight from memory (vbroadcastss). `Vec{} + x` would cost a scalar add on an
// FMA port per broadcast: adding +0.0 cannot be folded away under IEEE rules (it turns -0.0 into +0.0).
inline Vec Broadcast(const float* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<Vec>(_mm512_set1_ps(*p));
#elif defined(__AVX__)
  return reinterpret_cast<Vec>(_mm256_set1_ps(*p));
#else
  return Vec{} + *p;  // Other targets: portable, if slower.
#endif
}

// Runs run_item(k) for every k in [0, items) on the caller and up to `pool.num_threads() - 1` pool tasks, which
// claim items from a shared counter; returns when every item has run. The caller claims items too and never waits
// for a task that has not started, so nothing depends on a pool thread being free (no deadlock when the pool is busy
// with other work); a task that starts after the call has returned finds the state closed and does nothing (it
// never calls run_item, so run_item may refer to the caller's stack).
template <typename RunItem>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t items, RunItem run_item) {
  struct State {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    bool closed = false;  // no task may start working any more
    int64_t active = 0;   // tasks working now
  };
  auto state = std::make_shared<State>();
  auto work = [&run_item, items](State* s) {
    for (int64_t k = s->next.fetch_add(1); k < items; k = s->next.fetch_add(1)) run_item(k);
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), items));
  for (int64_t t = 1; t < workers; ++t) {
    pool.Schedule([state, work] {
      {
        std::lock_guard<std::mutex> lock(state->mu);
        if (state->closed) return;
        ++state->active;
      }
      work(state.get());
      std::lock_guard<std::mutex> lock(state->mu);
      --state->active;
      state->cv.notify_all();
    });
  }
  work(state.get());
  std::unique_lock<std::mutex> lock(state->mu);
  state->closed = true;
  state->cv.wait(lock, [&] { return state->active == 0; });
}

}  // namespace segrecon_native

#endif  // SEGRECON_JAX_MODELS_CSRC_NATIVE_COMMON_H_
