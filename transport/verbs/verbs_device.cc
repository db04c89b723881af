#include "verbs/verbs_device.h"
#include "verbs/verbs_status.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <rdma/rdma_cma.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "verbs/verbs_resources.h"

namespace zcx::transport::verbs {
namespace {

std::string readSysfsLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}

bool isZero(const ibv_gid& gid) {
  return std::all_of(std::begin(gid.raw), std::end(gid.raw), [](uint8_t b) { return b == 0; });
}

/// The IP address a RoCE GID stands for: IPv4 inside a v4-mapped GID (::ffff:a.b.c.d), otherwise
/// the GID itself as IPv6 (link-local ones scoped to their netdev).
CmAddress roceAddress(const ibv_gid& gid, uint32_t ifindex) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(gid.raw, kMapped, 12) == 0) {
    in_addr a{};
    std::memcpy(&a.s_addr, &gid.raw[12], 4);
    return CmAddress::ipv4(a);
  }
  in6_addr a{};
  std::memcpy(a.s6_addr, gid.raw, 16);
  CmAddress addr = CmAddress::ipv6(a);
  if (addr.isLinkLocal()) addr.setScopeId(ifindex);
  return addr;
}

struct GidEntry {
  bool valid = false;
  ibv_gid gid{};
  std::optional<GidType> type;
  std::string netdev;
  uint32_t ifindex = 0;
};

/// One GID table entry with its type: ibv_query_gid_ex, or ibv_query_gid + sysfs gid_attrs.
/// `ib_link`: the port's link layer is InfiniBand (sysfs says "IB/RoCE v1" for both).
GidEntry queryGid(ibv_context* ctx, const std::string& dev, uint8_t port, int index, bool ib_link) {
  GidEntry info;
  ibv_gid_entry entry{};
  int rc = ibv_query_gid_ex(ctx, port, static_cast<uint32_t>(index), &entry, 0);
  if (rc == 0) {
    info.gid = entry.gid;
    switch (entry.gid_type) {
      case IBV_GID_TYPE_IB: info.type = GidType::kIb; break;
      case IBV_GID_TYPE_ROCE_V1: info.type = GidType::kRoceV1; break;
      case IBV_GID_TYPE_ROCE_V2: info.type = GidType::kRoceV2; break;
    }
    info.ifindex = entry.ndev_ifindex;
    char name[IF_NAMESIZE] = {};
    if (entry.ndev_ifindex != 0 && if_indextoname(entry.ndev_ifindex, name) != nullptr) {
      info.netdev = name;
    }
    info.valid = !isZero(info.gid);
    return info;
  }
  if (rc != EOPNOTSUPP && rc != ENOSYS && rc != EPROTONOSUPPORT) return info;  // empty entry
  // Older kernels: the GID itself plus its type from sysfs.
  if (ibv_query_gid(ctx, port, index, &info.gid) != 0 || isZero(info.gid)) return info;
  const std::string base =
      "/sys/class/infiniband/" + dev + "/ports/" + std::to_string(port) + "/gid_attrs/";
  const std::string type = readSysfsLine(base + "types/" + std::to_string(index));
  if (type == "RoCE v2") info.type = GidType::kRoceV2;
  if (type == "IB/RoCE v1") info.type = ib_link ? GidType::kIb : GidType::kRoceV1;
  info.netdev = readSysfsLine(base + "ndevs/" + std::to_string(index));
  if (!info.netdev.empty()) info.ifindex = if_nametoindex(info.netdev.c_str());
  info.valid = true;
  return info;
}

/// The RoCE type rdma_cm uses on a port: configfs default_roce_mode when someone set it up
/// (mkdir /sys/kernel/config/rdma_cm/DEV), else the kernel's default, RoCE v2 where the port
/// supports it.
GidType cmRoceType(const std::string& dev, uint8_t port, bool port_has_v2, bool* configured) {
  const std::string mode = readSysfsLine("/sys/kernel/config/rdma_cm/" + dev + "/ports/" +
                                         std::to_string(port) + "/default_roce_mode");
  *configured = true;
  if (mode == "RoCE v2") return GidType::kRoceV2;
  if (mode == "IB/RoCE v1") return GidType::kRoceV1;
  *configured = false;
  return port_has_v2 ? GidType::kRoceV2 : GidType::kRoceV1;
}

/// The IP addresses of the IPoIB netdevs whose hardware address holds `gid` (an IPoIB hardware
/// address is 4 bytes of QPN and flags, then the port GID): what rdma_cm binds to on IB.
std::vector<std::pair<std::string, CmAddress>> ipoibAddresses(const ibv_gid& gid) {
  std::vector<std::pair<std::string, CmAddress>> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  std::unique_ptr<ifaddrs, decltype(&freeifaddrs)> guard(list, freeifaddrs);
  for (ifaddrs* ifa = list; ifa != nullptr; ifa = ifa->ifa_next) {
    if (ifa->ifa_addr == nullptr || ifa->ifa_name == nullptr) continue;
    const CmAddress addr = CmAddress::fromSockaddr(ifa->ifa_addr);
    if (addr.empty()) continue;
    const std::string sys = std::string("/sys/class/net/") + ifa->ifa_name;
    if (readSysfsLine(sys + "/type") != "32") continue;      // ARPHRD_INFINIBAND
    const std::string hw = readSysfsLine(sys + "/address");  // "80:00:02:08:fe:80:...", 20 bytes
    std::vector<uint8_t> bytes;
    for (size_t i = 0; i + 2 <= hw.size(); i += 3) {
      bytes.push_back(static_cast<uint8_t>(std::strtoul(hw.substr(i, 2).c_str(), nullptr, 16)));
    }
    if (bytes.size() != 20 || std::memcmp(&bytes[4], gid.raw, 16) != 0) continue;
    out.emplace_back(ifa->ifa_name, addr);  // link-local ones come with their scope id
  }
  return out;
}

/// Lower is better: RoCE v2 IPv4, RoCE v2 IPv6, RoCE v1 IPv4, RoCE v1 IPv6, IB IPv4, IB IPv6,
/// then link-local (RoCE v2, RoCE v1, IB): it reaches only its own L2 segment.
int rankOf(const GidCandidate& c) {
  const int type = c.type == GidType::kRoceV2 ? 0 : c.type == GidType::kRoceV1 ? 1 : 2;
  if (c.ip.isLinkLocal()) return 6 + type;
  return type * 2 + (c.ip.family() == AF_INET ? 0 : 1);
}

std::string describe(const GidCandidate& c) {
  std::string s = c.device_name + " port " + std::to_string(c.port) + " gid " +
                  std::to_string(c.index) + " (" + gidTypeName(c.type);
  if (!c.ip.empty()) s += " " + c.ip.familyName() + " " + c.ip.host();
  if (!c.netdev.empty()) s += " on " + c.netdev;
  return s + ")";
}

/// "a; b; c" of at most `limit` items, then "and N more".
std::string joinSome(const std::vector<std::string>& items, size_t limit) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < limit; ++i) s += (i ? "; " : "") + items[i];
  if (items.size() > limit) s += "; and " + std::to_string(items.size() - limit) + " more";
  return s;
}

}  // namespace

const char* gidTypeName(GidType type) {
  switch (type) {
    case GidType::kIb: return "IB";
    case GidType::kRoceV1: return "RoCE v1";
    case GidType::kRoceV2: return "RoCE v2";
  }
  return "?";
}

std::string ipv4String(in_addr addr) {
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &addr, buf, sizeof(buf));
  return buf;
}

std::string gidUnusableReason(const GidCandidate& c) {
  if (c.ip.empty()) {
    return c.type == GidType::kIb
               ? "an InfiniBand GID without an IP address: rdma_cm needs one on the port's IPoIB "
                 "netdev (e.g. `ip addr add 192.168.0.1/24 dev ib0`)"
               : "no IP address behind this GID";
  }
  if (c.type != GidType::kIb && c.type != c.cm_roce_type) {
    const std::string dir = "/sys/kernel/config/rdma_cm/" + c.device_name;
    return std::string("a ") + gidTypeName(c.type) + " GID, but rdma_cm on " + c.device_name +
           " port " + std::to_string(c.port) + " uses " + gidTypeName(c.cm_roce_type) +
           (c.cm_roce_type_configured ? " (configfs default_roce_mode)"
                                      : " (the kernel's default)") +
           " and would take the " + gidTypeName(c.cm_roce_type) +
           " GID of this address instead: pick a " + gidTypeName(c.cm_roce_type) +
           " GID, or (as root) `mkdir -p " + dir + " && echo '" +
           (c.type == GidType::kRoceV1 ? "IB/RoCE v1" : "RoCE v2") + "' > " + dir + "/ports/" +
           std::to_string(c.port) + "/default_roce_mode` (for every rdma_cm user of the port)";
  }
  if (c.ip.isLinkLocal() && c.ip.scopeId() == 0) {
    return "a link-local address whose network device is unknown (rdma_cm needs its scope)";
  }
  return "";
}

Result<GidPick> pickGid(const std::vector<GidCandidate>& candidates, const std::string& bind_host,
                        int pinned_index) {
  std::optional<CmAddress> hint;
  if (!bind_host.empty()) hint = CmAddress::parse(bind_host);
  std::vector<size_t> usable;
  std::vector<std::string> refused;
  std::string hint_refused;  // the bind host is a GID's address, but that GID is not usable
  for (size_t i = 0; i < candidates.size(); ++i) {
    const GidCandidate& c = candidates[i];
    if (pinned_index >= 0 && c.index != pinned_index) continue;
    if (std::string why = gidUnusableReason(c); !why.empty()) {
      refused.push_back(describe(c) + ": " + why);
      if (hint && c.ip.sameHost(*hint) && hint_refused.empty()) hint_refused = refused.back();
      continue;
    }
    usable.push_back(i);
  }
  if (usable.empty()) {
    if (refused.empty() && pinned_index >= 0) {
      return Status(
          StatusCode::kUnavailable,
          "gid_index " + std::to_string(pinned_index) +
              " is an empty GID table entry on every ACTIVE port considered (list the "
              "GIDs with `ibv_devinfo -v` or /sys/class/infiniband/DEV/ports/PORT/gids/)");
    }
    if (refused.empty()) {
      return Status(StatusCode::kUnavailable,
                    "no GID on any ACTIVE port (no IP address on the ports' network devices?)");
    }
    return Status(StatusCode::kUnavailable, "no usable GID: " + joinSome(refused, 8));
  }
  std::stable_sort(usable.begin(), usable.end(), [&](size_t a, size_t b) {
    const GidCandidate& x = candidates[a];
    const GidCandidate& y = candidates[b];
    if (rankOf(x) != rankOf(y)) return rankOf(x) < rankOf(y);
    if (x.device != y.device) return x.device < y.device;
    if (x.port != y.port) return x.port < y.port;
    return x.index < y.index;
  });
  GidPick pick;
  pick.chosen = usable.front();
  bool matched = false;
  if (hint) {
    auto it = std::find_if(usable.begin(), usable.end(),
                           [&](size_t i) { return candidates[i].ip.sameHost(*hint); });
    if (it != usable.end()) {
      pick.chosen = *it;
      matched = true;
    }
  }
  std::string why = matched ? "bind host " + bind_host + " is its address"
                    : pinned_index >= 0
                        ? "gid_index " + std::to_string(pinned_index) + " was asked for"
                        : std::string(
                              "the first by preference (RoCE v2 IPv4 > RoCE v2 "
                              "IPv6 > RoCE v1 IPv4 > RoCE v1 IPv6 > IB via IPoIB "
                              "> link-local)");
  if (matched && pinned_index >= 0) {
    why += " (and gid_index " + std::to_string(pinned_index) + " was asked for)";
  }
  if (hint && !matched) {
    why += "; bind host " + bind_host +
           (hint_refused.empty() ? " is not the address of a usable GID"
                                 : " is the address of " + hint_refused);
  }
  pick.reason = describe(candidates[pick.chosen]) + ": " + why;
  std::vector<std::string> others;
  for (size_t i : usable) {
    if (i != pick.chosen) others.push_back(describe(candidates[i]));
  }
  if (!others.empty()) pick.reason += "; also usable: " + joinSome(others, 4);
  if (!refused.empty()) pick.reason += "; not usable: " + joinSome(refused, 4);
  return pick;
}

Result<DeviceChoice> chooseDevice(const TransportConfig& config) {
  // 1. Is there any RDMA device at all? (The clearest message for a machine without RDMA.)
  int num = 0;
  errno = 0;
  IbvDeviceListPtr ibv_list(ibv_get_device_list(&num));
  const int list_errno = errno;
  if (!ibv_list || num == 0) {
    std::string msg = "no RDMA device found: ibv_get_device_list returned 0 devices";
    if (list_errno != 0) msg += " (" + errnoText(list_errno) + ")";
    if (list_errno == ENOSYS) {
      msg += "; the kernel has no RDMA support (load rdma_rxe or use --transport ucx)";
    } else {
      msg +=
          "; load an RDMA driver (e.g. `rdma link add rxe0 type rxe netdev eth0`) or use "
          "--transport ucx";
    }
    return Status(StatusCode::kUnavailable, msg);
  }
  ibv_list.reset();

  // 2. The contexts rdma_cm uses (so our PD/CQ match the cm ids' verbs context).
  errno = 0;
  int cm_num = 0;
  DeviceListPtr cm_list(rdma_get_devices(&cm_num));
  if (!cm_list || cm_num == 0) {
    return Status(StatusCode::kUnavailable,
                  "RDMA devices exist but rdma_cm cannot open them: rdma_get_devices failed (" +
                      errnoText(errno) +
                      "); load the rdma_ucm kernel module (/dev/infiniband/rdma_cm) or use "
                      "--transport ucx");
  }

  // 3. Every GID of every ACTIVE port considered, then the choice.
  struct Port {
    ibv_context* context;
    ibv_device_attr device_attr;
    ibv_port_attr port_attr;
  };
  std::vector<Port> ports;  // per candidate's (device, port): index = candidate.device
  std::vector<GidCandidate> candidates;
  std::vector<std::string> rejected;  // ports that were not even looked at, and why
  bool device_matched = false;
  for (int d = 0; d < cm_num; ++d) {
    ibv_context* ctx = cm_list.get()[d];
    if (ctx == nullptr) continue;
    const std::string name = ibv_get_device_name(ctx->device);
    if (!config.device.empty() && config.device != name) continue;
    device_matched = true;
    ibv_device_attr dattr{};
    if (int rc = ibv_query_device(ctx, &dattr); rc != 0) {
      rejected.push_back(name + ": ibv_query_device failed (" + errnoText(rc) + ")");
      continue;
    }
    for (int p = 1; p <= dattr.phys_port_cnt; ++p) {
      if (config.port > 0 && config.port != p) continue;
      const auto port = static_cast<uint8_t>(p);
      ibv_port_attr pattr{};
      if (int rc = ibv_query_port(ctx, port, &pattr); rc != 0) {
        rejected.push_back(name + " port " + std::to_string(p) + ": ibv_query_port failed (" +
                           errnoText(rc) + ")");
        continue;
      }
      if (pattr.state != IBV_PORT_ACTIVE) {
        rejected.push_back(name + " port " + std::to_string(p) + " is " +
                           ibv_port_state_str(pattr.state) +
                           ", not ACTIVE (is its network device up?)");
        continue;
      }
      const bool ib_link = pattr.link_layer == IBV_LINK_LAYER_INFINIBAND;
      const size_t port_id = ports.size();
      ports.push_back({ctx, dattr, pattr});
      const size_t first_candidate = candidates.size();
      bool has_v2 = false;
      // Every entry, also when gid_index pins one: the others tell rdma_cm's RoCE type and go
      // into the log as the alternatives.
      for (int g = 0; g < pattr.gid_tbl_len; ++g) {
        GidEntry e = queryGid(ctx, name, port, g, ib_link);
        if (!e.valid || !e.type) continue;
        GidCandidate c;
        c.device = port_id;
        c.device_name = name;
        c.port = port;
        c.index = g;
        c.type = *e.type;
        c.netdev = e.netdev;
        if (c.type == GidType::kIb) {
          auto addrs = ipoibAddresses(e.gid);
          if (addrs.empty()) candidates.push_back(c);  // refused, with the reason
          for (auto& [ifname, addr] : addrs) {
            GidCandidate ci = c;
            ci.netdev = ifname;
            ci.ip = addr;
            candidates.push_back(std::move(ci));
          }
          continue;
        }
        has_v2 = has_v2 || c.type == GidType::kRoceV2;
        c.ip = roceAddress(e.gid, e.ifindex);
        candidates.push_back(std::move(c));
      }
      if (!ib_link && candidates.size() > first_candidate) {
        bool configured = false;
        const GidType mode = cmRoceType(name, port, has_v2, &configured);
        for (size_t i = first_candidate; i < candidates.size(); ++i) {
          candidates[i].cm_roce_type = mode;
          candidates[i].cm_roce_type_configured = configured;
        }
      }
      if (candidates.size() == first_candidate) {
        rejected.push_back(name + " port " + std::to_string(p) +
                           " has no GID (no IP address on its network device?)");
      }
    }
  }
  if (!config.device.empty() && !device_matched) {
    return Status(StatusCode::kUnavailable,
                  "RDMA device '" + config.device + "' not found (see `ibv_devices`)");
  }
  auto pick = pickGid(candidates, config.bind_host, config.gid_index);
  if (!pick.ok()) {
    std::string why = pick.status().message();
    if (!rejected.empty()) why += "; " + joinSome(rejected, 8);
    return Status(StatusCode::kUnavailable, "no usable RDMA port: " + why +
                                                "; check `ibv_devinfo -v` or use --transport ucx");
  }
  const GidCandidate& c = candidates[pick->chosen];
  const Port& port = ports[c.device];
  DeviceChoice choice;
  choice.context = port.context;
  choice.name = c.device_name;
  choice.port = c.port;
  choice.gid_index = c.index;
  choice.gid_type = gidTypeName(c.type);
  choice.netdev = c.netdev;
  choice.address = c.ip;
  choice.reason = pick->reason;
  if (!rejected.empty()) choice.reason += "; ports skipped: " + joinSome(rejected, 4);
  choice.device_attr = port.device_attr;
  choice.port_attr = port.port_attr;
  LOG(INFO) << "verbs: chose " << choice.reason;
  return choice;
}

}  // namespace zcx::transport::verbs
