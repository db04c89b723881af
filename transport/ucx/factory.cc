#include "ucx/factory.h"

#include "ucx/ucx_transport.h"

namespace zcx::transport::ucx {

Result<std::unique_ptr<Transport>> create(const TransportConfig& config) {
  auto transport = UcxTransport::create(config);
  if (!transport.ok()) return transport.status();
  return std::unique_ptr<Transport>(std::move(transport).value());
}

}  // namespace zcx::transport::ucx
