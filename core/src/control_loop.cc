#include "control_loop.h"

#include <errno.h>
#include <glog/logging.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

namespace zcx::detail {
namespace {
constexpr ControlLoop::Key kWakeKey = 0;  // registration keys start at 1
constexpr int kMaxEvents = 128;
}  // namespace

Status ControlLoop::init() {
  epoll_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
  wake_ = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!epoll_.valid() || !wake_.valid()) {
    return Status(StatusCode::kResourceExhausted,
                  std::string("epoll/eventfd: ") + std::strerror(errno) + "; too many open files?");
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev) != 0) {
    return Status(StatusCode::kInternal, std::string("epoll_ctl: ") + std::strerror(errno));
  }
  return Status::Ok();
}

ControlLoop::Key ControlLoop::add(int fd, uint32_t events, Handler handler) {
  Key key = next_key_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = key;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    LOG(WARNING) << "zcx: epoll_ctl(ADD) failed: " << std::strerror(errno);
    return 0;
  }
  entries_.emplace(key, Entry{fd, std::make_shared<Handler>(std::move(handler))});
  return key;
}

void ControlLoop::modify(Key key, uint32_t events) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = key;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, it->second.fd, &ev);
}

void ControlLoop::remove(Key key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
  entries_.erase(it);
}

void ControlLoop::runOnce(int timeout_ms) {
  epoll_event events[kMaxEvents];
  int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout_ms);
  for (int i = 0; i < n; ++i) {
    Key key = events[i].data.u64;
    if (key == kWakeKey) {
      uint64_t v;
      (void)!::read(wake_.get(), &v, sizeof(v));
      continue;
    }
    auto it = entries_.find(key);
    if (it == entries_.end()) continue;  // removed by an earlier handler of this round
    auto h = it->second.handler;         // keeps the handler alive if it removes itself
    (*h)(events[i].events);
  }
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    tasks.swap(tasks_);
  }
  for (auto& t : tasks) t();
}

void ControlLoop::clear() {
  for (auto& [key, e] : entries_) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, e.fd, nullptr);
  auto entries = std::move(entries_);
  entries_.clear();
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    tasks.swap(tasks_);
  }
  // handlers and tasks (and the connections they hold) go here, outside the lock
}

void ControlLoop::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    tasks_.push_back(std::move(task));
  }
  wake();
}

void ControlLoop::wake() {
  uint64_t one = 1;
  if (wake_.valid()) (void)!::write(wake_.get(), &one, sizeof(one));
}

}  // namespace zcx::detail
