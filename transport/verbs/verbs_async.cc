#include "verbs/verbs_async.h"
#include "verbs/verbs_status.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace zcx::transport::verbs {
namespace {

struct Subscriber {
  uint8_t port = 0;
  ibv_cq* cq = nullptr;
  int wake_fd = -1;
  std::vector<AsyncEvent> queue;
};

struct QpOwner {
  const void* key = nullptr;
  uint32_t serial = 0;
};

struct ContextState {
  std::map<const void*, Subscriber> subscribers;
  std::unordered_map<uint32_t, QpOwner> qps;
};

struct Hub {
  std::mutex mu;
  std::map<ibv_context*, ContextState> contexts;
};

Hub& hub() {
  static Hub* h = new Hub();  // never destroyed: transports may outlive static destructors
  return *h;
}

void queueFor(Subscriber& s, const AsyncEvent& ev) {
  s.queue.push_back(ev);
  const uint64_t one = 1;
  if (s.wake_fd >= 0 && ::write(s.wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
    LOG(WARNING) << "verbs: cannot wake a transport for an async event: " << errnoText(errno);
  }
}

/// Events whose element is a QP (routed by qp_num).
bool isQpEvent(ibv_event_type type) {
  switch (type) {
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
    case IBV_EVENT_COMM_EST:
    case IBV_EVENT_SQ_DRAINED:
    case IBV_EVENT_PATH_MIG:
    case IBV_EVENT_PATH_MIG_ERR:
    case IBV_EVENT_QP_LAST_WQE_REACHED: return true;
    default: return false;
  }
}

/// Queues `ev` for the transport(s) it concerns. Called with the hub lock held.
void route(ContextState& st, AsyncEvent ev, ibv_cq* cq) {
  if (isQpEvent(ev.type)) {
    auto q = st.qps.find(ev.qp_num);
    if (q == st.qps.end()) {
      VLOG(1) << "verbs: async event " << ibv_event_type_str(ev.type) << " for QP " << ev.qp_num
              << " which no verbs transport owns; ignored";
      return;
    }
    auto s = st.subscribers.find(q->second.key);
    if (s == st.subscribers.end()) return;
    ev.serial = q->second.serial;
    queueFor(s->second, ev);
    return;
  }
  switch (ev.type) {
    case IBV_EVENT_CQ_ERR: {
      bool found = false;
      for (auto& [key, s] : st.subscribers) {
        if (s.cq == cq) {
          queueFor(s, ev);
          found = true;
        }
      }
      if (!found) VLOG(1) << "verbs: IBV_EVENT_CQ_ERR for a CQ no verbs transport owns";
      break;
    }
    case IBV_EVENT_DEVICE_FATAL:
      for (auto& [key, s] : st.subscribers) queueFor(s, ev);
      break;
    default:
      // Port events go to the transports on that port; SRQ/WQ events to everyone (logged).
      for (auto& [key, s] : st.subscribers) {
        if (ev.port == 0 || ev.port == s.port) queueFor(s, ev);
      }
      break;
  }
}

/// Reads and routes every pending event of `ctx`. Called with the hub lock held.
void readEvents(ibv_context* ctx, ContextState& st) {
  for (int i = 0; i < 256; ++i) {
    ibv_async_event event{};
    if (ibv_get_async_event(ctx, &event) != 0) break;  // EAGAIN: nothing more
    AsyncEvent ev;
    ev.type = event.event_type;
    ibv_cq* cq = nullptr;
    if (isQpEvent(event.event_type)) {
      ev.qp_num = event.element.qp != nullptr ? event.element.qp->qp_num : 0;
    }
    switch (event.event_type) {
      case IBV_EVENT_CQ_ERR: cq = event.element.cq; break;
      case IBV_EVENT_PORT_ACTIVE:
      case IBV_EVENT_PORT_ERR:
      case IBV_EVENT_LID_CHANGE:
      case IBV_EVENT_PKEY_CHANGE:
      case IBV_EVENT_SM_CHANGE:
      case IBV_EVENT_CLIENT_REREGISTER:
      case IBV_EVENT_GID_CHANGE: ev.port = static_cast<uint8_t>(event.element.port_num); break;
      default: break;
    }
    // Ack at once: ibv_destroy_qp/cq wait for the acks of their events.
    ibv_ack_async_event(&event);
    route(st, ev, cq);
  }
}

}  // namespace

Status AsyncEventHub::subscribe(ibv_context* context, const void* key, uint8_t port, ibv_cq* cq,
                                int wake_fd) {
  std::lock_guard lock(hub().mu);
  const int flags = fcntl(context->async_fd, F_GETFL);
  if (flags < 0 ||
      ((flags & O_NONBLOCK) == 0 && fcntl(context->async_fd, F_SETFL, flags | O_NONBLOCK) < 0)) {
    return Status(StatusCode::kInternal,
                  std::string("cannot make the device's async event fd non-blocking (") +
                      errnoText(errno) + ")");
  }
  Subscriber& s = hub().contexts[context].subscribers[key];
  s.port = port;
  s.cq = cq;
  s.wake_fd = wake_fd;
  return Status();
}

void AsyncEventHub::unsubscribe(ibv_context* context, const void* key) {
  std::lock_guard lock(hub().mu);
  auto c = hub().contexts.find(context);
  if (c == hub().contexts.end()) return;
  c->second.subscribers.erase(key);
  for (auto q = c->second.qps.begin(); q != c->second.qps.end();) {
    q = q->second.key == key ? c->second.qps.erase(q) : std::next(q);
  }
  if (c->second.subscribers.empty()) hub().contexts.erase(c);
}

void AsyncEventHub::addQp(ibv_context* context, const void* key, uint32_t qp_num, uint32_t serial) {
  std::lock_guard lock(hub().mu);
  hub().contexts[context].qps[qp_num] = QpOwner{key, serial};
}

void AsyncEventHub::removeQp(ibv_context* context, uint32_t qp_num) {
  std::lock_guard lock(hub().mu);
  auto c = hub().contexts.find(context);
  if (c != hub().contexts.end()) c->second.qps.erase(qp_num);
}

void AsyncEventHub::injectForTest(ibv_context* context, ibv_event_type type, uint32_t qp_num,
                                  uint8_t port, ibv_cq* cq) {
  std::lock_guard lock(hub().mu);
  auto c = hub().contexts.find(context);
  if (c == hub().contexts.end()) return;
  AsyncEvent ev;
  ev.type = type;
  ev.qp_num = qp_num;
  ev.port = port;
  route(c->second, ev, cq);
}

std::vector<AsyncEvent> AsyncEventHub::poll(ibv_context* context, const void* key) {
  std::lock_guard lock(hub().mu);
  auto c = hub().contexts.find(context);
  if (c == hub().contexts.end()) return {};
  readEvents(context, c->second);
  auto s = c->second.subscribers.find(key);
  if (s == c->second.subscribers.end()) return {};
  std::vector<AsyncEvent> out;
  out.swap(s->second.queue);
  return out;
}

}  // namespace zcx::transport::verbs
