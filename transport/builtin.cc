// Ties the compiled-in transports to the core's registry (the core never names them).
#include "ucx/factory.h"
#include "zcx/transport/registry.h"
#ifdef ZCX_HAVE_VERBS
#include "verbs/factory.h"
#endif

namespace zcx::transport {

void registerBuiltinTransports(TransportRegistry& registry) {
#ifdef ZCX_HAVE_VERBS
  // RDMA first: "auto" tries verbs and falls to UCX when no RDMA port is active.
  registry.add({"verbs", 100, &verbs::create});
#endif
  registry.add({"ucx", 10, &ucx::create});
}

}  // namespace zcx::transport
