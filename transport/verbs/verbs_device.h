// Choosing the RDMA device, port and GID a verbs transport runs on: RoCE v2 or v1 (IPv4 or IPv6)
// or InfiniBand (through the IPoIB netdev's address). rdma_cm does every connection, so a GID is
// only usable if rdma_cm can bind to an IP address that maps to it.
#pragma once

#include <infiniband/verbs.h>
#include <netinet/in.h>

#include <optional>
#include <string>
#include <vector>

#include "verbs/verbs_wire.h"
#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

enum class GidType { kIb, kRoceV1, kRoceV2 };
const char* gidTypeName(GidType type);  ///< "IB", "RoCE v1", "RoCE v2"

struct DeviceChoice {
  /// Owned by librdmacm (from rdma_get_devices): the context rdma_cm ids use, so PDs and CQs
  /// made on it work with rdma_create_qp. Never closed by us.
  ibv_context* context = nullptr;
  std::string name;
  uint8_t port = 0;
  int gid_index = -1;
  std::string gid_type;  ///< "RoCE v2", "RoCE v1", "IB"
  std::string netdev;    ///< the network device behind the GID (IB: the IPoIB netdev; "" unknown)
  /// The address rdma_cm binds to (port 0): the GID's own IP for RoCE, the IPoIB netdev's for IB.
  /// An IPv6 link-local address carries its netdev as scope id.
  CmAddress address;
  std::string reason;  ///< why this GID was chosen (and what else was seen), for the log
  ibv_device_attr device_attr{};
  ibv_port_attr port_attr{};
};

/// Picks config.device/port/gid_index, or the best usable GID of the ACTIVE ports, in this
/// order: RoCE v2 IPv4 > RoCE v2 IPv6 > RoCE v1 IPv4 > RoCE v1 IPv6 > IB (IPoIB IPv4, then IPv6)
/// > IPv6 link-local (RoCE v2, v1, IB). A RoCE GID is usable only when its type is the one
/// rdma_cm uses on that port (configfs default_roce_mode, RoCE v2 unless changed). config.
/// bind_host, an IPv4 or IPv6 literal that is one of the usable addresses, picks that one. The
/// choice and its reason are logged (LOG(INFO)). kUnavailable with the cause when nothing is
/// usable ("no RDMA device found ...", or why each GID was refused).
Result<DeviceChoice> chooseDevice(const TransportConfig& config);

// ---- the decision itself, apart from the hardware (unit-tested on machines without RDMA)

/// One GID table entry (for IB: one per address of the port's IPoIB netdev).
struct GidCandidate {
  size_t device = 0;  ///< which (device, port) of the caller's list; for ties, lower wins
  std::string device_name;
  uint8_t port = 0;
  int index = 0;
  GidType type = GidType::kRoceV2;
  std::string netdev;
  CmAddress ip;  ///< empty: no address rdma_cm could bind to (an IB GID without IPoIB address)
  /// The RoCE type rdma_cm uses on this port; a RoCE GID of the other type cannot be used.
  GidType cm_roce_type = GidType::kRoceV2;
  bool cm_roce_type_configured = false;  ///< read from configfs (else the kernel's default)
};

struct GidPick {
  size_t chosen = 0;  ///< index into the candidates
  std::string reason;
};

/// The best usable candidate (see chooseDevice for the order), bind_host (a literal) preferred,
/// only `pinned_index` considered when it is >= 0. kUnavailable with every refusal's reason
/// when none is usable.
Result<GidPick> pickGid(const std::vector<GidCandidate>& candidates, const std::string& bind_host,
                        int pinned_index);

/// Why rdma_cm cannot use `c` ("" when it can).
std::string gidUnusableReason(const GidCandidate& c);

std::string ipv4String(in_addr addr);

}  // namespace zcx::transport::verbs
