#include "verbs/factory.h"

#include "verbs/verbs_transport.h"

namespace zcx::transport::verbs {

Result<std::unique_ptr<Transport>> create(const TransportConfig& config) {
  auto r = VerbsTransport::create(config);
  if (!r.ok()) return r.status();
  return std::unique_ptr<Transport>(std::move(*r));
}

}  // namespace zcx::transport::verbs
