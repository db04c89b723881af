#include "verbs/testing.h"

#include "verbs/verbs_async.h"
#include "verbs/verbs_endpoint.h"
#include "verbs/verbs_transport.h"

namespace zcx::transport::verbs::testing {

Status injectAsyncEvent(Transport* transport, Endpoint* endpoint, ibv_event_type type) {
  auto* t = dynamic_cast<VerbsTransport*>(transport);
  if (t == nullptr) return Status(StatusCode::kInvalidArgument, "not a verbs transport");
  uint32_t qp_num = 0;
  if (endpoint != nullptr) {
    auto* ep = dynamic_cast<VerbsEndpoint*>(endpoint);
    if (ep == nullptr || ep->qpNum() == 0) {
      return Status(StatusCode::kInvalidArgument, "not a verbs endpoint with a QP");
    }
    qp_num = ep->qpNum();
  }
  AsyncEventHub::injectForTest(t->device().context, type, qp_num, t->device().port, t->cq());
  return Status();
}

}  // namespace zcx::transport::verbs::testing
