#include "verbs/factory.h"

#include <glog/logging.h>

#include "verbs/verbs_rails.h"
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
    TransportConfig one = config;
    one.device = name;
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
  if (!skipped.empty()) LOG(INFO) << "verbs: devices=all skips " << skipped;
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
