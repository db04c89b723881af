// Choosing the RDMA device, port and RoCE v2 IPv4 GID a verbs transport runs on.
#pragma once

#include <infiniband/verbs.h>
#include <netinet/in.h>

#include <string>

#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

struct DeviceChoice {
  /// Owned by librdmacm (from rdma_get_devices): the context rdma_cm ids use, so PDs and CQs
  /// made on it work with rdma_create_qp. Never closed by us.
  ibv_context* context = nullptr;
  std::string name;
  uint8_t port = 0;
  int gid_index = -1;
  std::string gid_type;  ///< "RoCE v2", "RoCE v1", "IB"
  std::string netdev;    ///< the network device behind the GID ("" if unknown)
  in_addr ipv4{};        ///< the IPv4 address rdma_cm binds to
  ibv_device_attr device_attr{};
  ibv_port_attr port_attr{};
};

/// Picks config.device/port/gid_index, or the first device with an ACTIVE port and a RoCE v2
/// IPv4 GID (config.bind_host, if it is one of the device's addresses, picks among GIDs).
/// kUnavailable with the cause when nothing usable exists ("no RDMA device found ...").
Result<DeviceChoice> chooseDevice(const TransportConfig& config);

std::string ipv4String(in_addr addr);

}  // namespace zcx::transport::verbs
