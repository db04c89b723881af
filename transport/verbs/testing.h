// Test hooks of the verbs transport (not for production code).
#pragma once

#include <infiniband/verbs.h>

#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs::testing {

/// Makes the device context of `transport` deliver the async event `type` as if the device had
/// reported it: for `endpoint`'s QP (QP events; the endpoint may belong to another transport on
/// the same context), for the transport's port (port events) or its CQ (IBV_EVENT_CQ_ERR). The
/// event takes the same routing as a real one (ibv_get_async_event) and is handled by progress().
Status injectAsyncEvent(Transport* transport, Endpoint* endpoint, ibv_event_type type);

}  // namespace zcx::transport::verbs::testing
