#include "verbs/factory.h"

#include <glog/logging.h>

#include "verbs/verbs_rails.h"
#include "verbs/verbs_rails_wire.h"
#include "verbs/verbs_transport.h"

namespace zcx::transport::verbs {

Result<std::unique_ptr<Transport>> create(const TransportConfig& config) {
  const bool list = config.device == "all" || config.device.find(',') != std::string::npos;
  if (!list) {
    auto r = VerbsTransport::create(config);
    if (!r.ok()) return r.status();
    return std::unique_ptr<Transport>(std::move(*r));
  }
  auto names = parseDeviceList(config.device);
  if (!names.ok()) return names.status();
  // "all" takes the devices that work; a list names devices that must.
  std::vector<std::unique_ptr<VerbsTransport>> rails;
  std::string skipped;
  for (const std::string& name : *names) {
    if (rails.size() == kMaxRails) break;
    TransportConfig one = config;
    one.device = name;
    // Rails other than 0 carry no keepalive: their QPs must give up on a dead link (soft-RoCE
    // retries forever with 7) so that their slices move to the other rails.
    if (!rails.empty() && one.params.count("verbs.retry_count") == 0) {
      one.params["verbs.retry_count"] = "6";
    }
    auto r = VerbsTransport::create(one);
    if (!r.ok() && config.device != "all") {
      return Status(r.status().code(), "rail " + name + ": " + r.status().message());
    }
    if (!r.ok()) {
      skipped += (skipped.empty() ? "" : "; ") + name + ": " + r.status().message();
      continue;
    }
    rails.push_back(std::move(*r));
  }
  // Rails pair by position: a node that skipped a device its peers use pairs the rails after it
  // with the wrong fabric (those lanes then fail to connect and go unused).
  if (!skipped.empty()) {
    LOG(WARNING) << "verbs: devices=all skips " << skipped
                 << "; rails pair by position, so every node must end up with the same devices";
  }
  if (rails.empty()) {
    return Status(StatusCode::kUnavailable,
                  "devices=all: no usable RDMA device (" +
                      (skipped.empty() ? std::string("none found") : skipped) +
                      "); check `ibv_devinfo` or use --transport ucx");
  }
  if (rails.size() == 1) return std::unique_ptr<Transport>(std::move(rails[0]));
  auto t = RailsTransport::create(std::move(rails));
  if (!t.ok()) return t.status();
  return std::unique_ptr<Transport>(std::move(*t));
}

}  // namespace zcx::transport::verbs
