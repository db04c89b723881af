// Asynchronous device events (ibv_get_async_event) for verbs transports that share one device
// context. librdmacm's rdma_get_devices() contexts are process-wide, so several VerbsTransport
// objects (possibly driven by different threads) can sit on one ibv_context and its one async
// fd. The hub reads that fd for all of them: whichever transport progresses first reads and acks
// every pending event and queues it for the transport(s) it concerns (QP events by qp_num, port
// and device events to every transport on that port/device, CQ events to the CQ's owner), then
// wakes them through their own eventfd so no event is lost for a transport that sleeps.
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <vector>

#include "zcx/status.h"

namespace zcx::transport::verbs {

/// One event, already acked, as queued for one transport.
struct AsyncEvent {
  ibv_event_type type = IBV_EVENT_COMM_EST;
  uint32_t qp_num = 0;
  uint32_t serial = 0;  ///< for QP events: the endpoint the QP belonged to when it was read
  uint8_t port = 0;
};

class AsyncEventHub {
 public:
  /// Subscribes a transport (key) on `context`/`port` with CQ `cq`; `wake_fd` (an eventfd) is
  /// written when events are queued for it. Makes the context's async fd non-blocking.
  static Status subscribe(ibv_context* context, const void* key, uint8_t port, ibv_cq* cq,
                          int wake_fd);
  static void unsubscribe(ibv_context* context, const void* key);
  /// Routes events of QP `qp_num` to `key`'s endpoint `serial` (until removeQp).
  static void addQp(ibv_context* context, const void* key, uint32_t qp_num, uint32_t serial);
  static void removeQp(ibv_context* context, uint32_t qp_num);
  /// Reads every pending event of the context (acking each), then returns the ones queued for
  /// `key`. Never blocks.
  static std::vector<AsyncEvent> poll(ibv_context* context, const void* key);
  /// Tests only: routes an event as if the device had reported it (see verbs/testing.h).
  static void injectForTest(ibv_context* context, ibv_event_type type, uint32_t qp_num,
                            uint8_t port, ibv_cq* cq);
};

}  // namespace zcx::transport::verbs
