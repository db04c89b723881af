#include "verbs/verbs_device.h"
#include "verbs/verbs_status.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <net/if.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <cstring>
#include <fstream>
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

/// The IPv4 address inside a v4-mapped GID (::ffff:a.b.c.d), if it is one.
std::optional<in_addr> mappedIpv4(const ibv_gid& gid) {
  for (int i = 0; i < 10; ++i) {
    if (gid.raw[i] != 0) return std::nullopt;
  }
  if (gid.raw[10] != 0xff || gid.raw[11] != 0xff) return std::nullopt;
  in_addr a{};
  std::memcpy(&a.s_addr, &gid.raw[12], 4);
  return a;
}

struct GidInfo {
  bool valid = false;
  ibv_gid gid{};
  std::string type;
  std::string netdev;
};

/// One GID table entry with its type: ibv_query_gid_ex, or ibv_query_gid + sysfs gid_attrs.
GidInfo queryGid(ibv_context* ctx, const std::string& dev, uint8_t port, int index) {
  GidInfo info;
  ibv_gid_entry entry{};
  int rc = ibv_query_gid_ex(ctx, port, static_cast<uint32_t>(index), &entry, 0);
  if (rc == 0) {
    info.valid = true;
    info.gid = entry.gid;
    switch (entry.gid_type) {
      case IBV_GID_TYPE_IB: info.type = "IB"; break;
      case IBV_GID_TYPE_ROCE_V1: info.type = "RoCE v1"; break;
      case IBV_GID_TYPE_ROCE_V2: info.type = "RoCE v2"; break;
    }
    char name[IF_NAMESIZE] = {};
    if (entry.ndev_ifindex != 0 && if_indextoname(entry.ndev_ifindex, name) != nullptr) {
      info.netdev = name;
    }
    return info;
  }
  if (rc != EOPNOTSUPP && rc != ENOSYS && rc != EPROTONOSUPPORT) return info;  // empty entry
  // Older kernels: the GID itself plus its type from sysfs.
  if (ibv_query_gid(ctx, port, index, &info.gid) != 0) return info;
  const std::string base =
      "/sys/class/infiniband/" + dev + "/ports/" + std::to_string(port) + "/gid_attrs/";
  info.type = readSysfsLine(base + "types/" + std::to_string(index));
  info.netdev = readSysfsLine(base + "ndevs/" + std::to_string(index));
  info.valid = true;
  return info;
}

}  // namespace

std::string ipv4String(in_addr addr) {
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &addr, buf, sizeof(buf));
  return buf;
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

  std::optional<in_addr> hint;
  if (!config.bind_host.empty()) {
    in_addr a{};
    if (inet_pton(AF_INET, config.bind_host.c_str(), &a) == 1 && a.s_addr != INADDR_ANY) hint = a;
  }

  std::ostringstream rejected;  // why each candidate was skipped
  bool device_matched = false;
  std::optional<DeviceChoice> best;
  for (int d = 0; d < cm_num && !(best && hint && best->ipv4.s_addr == hint->s_addr); ++d) {
    ibv_context* ctx = cm_list.get()[d];
    if (ctx == nullptr) continue;
    const std::string name = ibv_get_device_name(ctx->device);
    if (!config.device.empty() && config.device != name) continue;
    device_matched = true;
    ibv_device_attr dattr{};
    if (int rc = ibv_query_device(ctx, &dattr); rc != 0) {
      rejected << name << ": ibv_query_device failed (" << errnoText(rc) << "); ";
      continue;
    }
    for (int p = 1; p <= dattr.phys_port_cnt; ++p) {
      if (config.port > 0 && config.port != p) continue;
      ibv_port_attr pattr{};
      if (int rc = ibv_query_port(ctx, static_cast<uint8_t>(p), &pattr); rc != 0) {
        rejected << name << " port " << p << ": ibv_query_port failed (" << errnoText(rc) << "); ";
        continue;
      }
      if (pattr.state != IBV_PORT_ACTIVE) {
        rejected << name << " port " << p << " is " << ibv_port_state_str(pattr.state)
                 << ", not ACTIVE (is its network device up?); ";
        continue;
      }
      const int first = config.gid_index >= 0 ? config.gid_index : 0;
      const int last = config.gid_index >= 0 ? config.gid_index : pattr.gid_tbl_len - 1;
      bool found = false;
      for (int g = first; g <= last; ++g) {
        GidInfo info = queryGid(ctx, name, static_cast<uint8_t>(p), g);
        if (!info.valid) continue;
        std::optional<in_addr> ip = mappedIpv4(info.gid);
        const bool roce_v2 = info.type == "RoCE v2";
        if (!ip || !roce_v2) {
          if (config.gid_index >= 0) {
            rejected << name << " port " << p << " gid " << g
                     << " is not a RoCE v2 IPv4 GID (type '" << info.type << "'); ";
          }
          continue;
        }
        DeviceChoice c;
        c.context = ctx;
        c.name = name;
        c.port = static_cast<uint8_t>(p);
        c.gid_index = g;
        c.gid_type = info.type;
        c.netdev = info.netdev;
        c.ipv4 = *ip;
        c.device_attr = dattr;
        c.port_attr = pattr;
        found = true;
        if (!best) best = c;
        if (hint && ip->s_addr == hint->s_addr) {
          best = c;
          break;
        }
      }
      if (!found && config.gid_index < 0) {
        rejected << name << " port " << p << " has no RoCE v2 IPv4 GID (no IPv4 address on its "
                 << "network device?); ";
      }
      if (best && (!hint || best->ipv4.s_addr == hint->s_addr)) break;
    }
  }
  if (!config.device.empty() && !device_matched) {
    return Status(StatusCode::kUnavailable,
                  "RDMA device '" + config.device + "' not found (see `ibv_devices`)");
  }
  if (!best) {
    std::string why = rejected.str();
    if (why.size() >= 2) why.resize(why.size() - 2);
    return Status(StatusCode::kUnavailable,
                  "no usable RDMA port: no ACTIVE port with a RoCE v2 IPv4 GID (" + why +
                      "); check `ibv_devinfo -v` or use --transport ucx");
  }
  if (hint && best->ipv4.s_addr != hint->s_addr) {
    VLOG(1) << "verbs: bind host " << config.bind_host << " is not an address of " << best->name
            << "; using " << ipv4String(best->ipv4);
  }
  return *best;
}

}  // namespace zcx::transport::verbs
