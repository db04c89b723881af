// The control thread's event loop: epoll over sockets, an eventfd to wake it, and tasks other
// threads hand it. Handlers run on the loop thread only and must never block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

class ControlLoop {
 public:
  /// Identifies one registration; never reused, so a stale event cannot reach a newer socket
  /// that got the same fd number.
  using Key = uint64_t;
  using Handler = std::function<void(uint32_t events)>;

  Status init();

  // ---- loop thread only ----
  /// Registers fd; returns its key (the one nextKey() announced), 0 if epoll refused.
  Key add(int fd, uint32_t events, Handler handler);
  Key nextKey() const { return next_key_; }
  void modify(Key key, uint32_t events);
  /// Unregisters; a handler may remove itself (it lives until it returns).
  void remove(Key key);
  bool contains(Key key) const { return entries_.count(key) != 0; }
  /// Waits up to timeout_ms for events, runs their handlers and the posted tasks.
  void runOnce(int timeout_ms);
  /// Drops every registration and task (after the loop thread has stopped).
  void clear();

  // ---- any thread ----
  /// Runs `task` on the loop thread soon.
  void post(std::function<void()> task);
  void wake();

 private:
  struct Entry {
    int fd;
    std::shared_ptr<Handler> handler;
  };
  Fd epoll_;
  Fd wake_;
  Key next_key_ = 1;
  std::unordered_map<Key, Entry> entries_;

  std::mutex tasks_mu_;
  std::vector<std::function<void()>> tasks_;
};

}  // namespace zcx::detail
