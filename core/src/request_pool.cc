#include "request_pool.h"

namespace zcx::detail {
namespace {

struct FreeBlock {
  FreeBlock* next;
};

// Under AddressSanitizer every block goes back to the allocator, so that a use after the last
// reference is still reported rather than landing in a recycled request.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRecycle = false;
#else
constexpr bool kRecycle = true;
#endif

// One list per thread; its destructor returns the blocks when the thread ends (a block freed
// after that, by a later thread-exit destructor, goes straight back to the allocator).
struct ThreadBlocks {
  FreeBlock* head = nullptr;
  size_t count = 0;
  bool gone = false;
  ~ThreadBlocks() {
    gone = true;
    while (head != nullptr) {
      FreeBlock* b = head;
      head = b->next;
      ::operator delete(b);
    }
  }
};

thread_local ThreadBlocks tls_blocks;

}  // namespace

void* RequestBlockCache::take(size_t bytes) {
  if (!kRecycle || bytes > kBlockBytes) return ::operator new(bytes);
  ThreadBlocks& t = tls_blocks;
  if (t.head == nullptr) return ::operator new(kBlockBytes);  // any block may join a list
  FreeBlock* b = t.head;
  t.head = b->next;
  --t.count;
  return b;
}

void RequestBlockCache::give(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
  ThreadBlocks& t = tls_blocks;
  if (!kRecycle || bytes > kBlockBytes || t.gone || t.count >= kMaxCached) {
    ::operator delete(p);
    return;
  }
  auto* b = static_cast<FreeBlock*>(p);
  b->next = t.head;
  t.head = b;
  ++t.count;
}

size_t RequestBlockCache::cachedOnThisThread() { return tls_blocks.count; }

}  // namespace zcx::detail
