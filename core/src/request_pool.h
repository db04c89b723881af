// Where RequestStates live: blocks recycled through a per-thread free list instead of going
// back to malloc after every operation. A pipeline of operations frees one state and allocates
// the next on the same thread (the one that posts and reaps), so in steady state an operation
// costs no allocation. A block freed on another thread (a Request dropped there) joins that
// thread's list; blocks are plain operator-new memory, so any list may take any block.
#pragma once

#include <cstddef>
#include <new>

namespace zcx::detail {

/// The free lists behind PoolAllocator: one size class (kBlockBytes), per thread, bounded.
class RequestBlockCache {
 public:
  static constexpr size_t kBlockBytes = 512;  ///< fits the control block + RequestState
  static constexpr size_t kMaxCached = 1024;  ///< per thread: deeper pipelines use malloc

  static void* take(size_t bytes);
  static void give(void* p, size_t bytes) noexcept;
  /// Blocks now in this thread's list (for tests).
  static size_t cachedOnThisThread();
};

/// A std allocator over RequestBlockCache, for std::allocate_shared (which rebinds it to its
/// control block type). Larger requests go to operator new.
template <class T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() noexcept = default;
  template <class U>
  PoolAllocator(const PoolAllocator<U>&) noexcept {}

  T* allocate(size_t n) { return static_cast<T*>(RequestBlockCache::take(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { RequestBlockCache::give(p, n * sizeof(T)); }

  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "over-aligned type");
  template <class U>
  bool operator==(const PoolAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace zcx::detail
