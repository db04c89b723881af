#include "zcx/transport/registry.h"

#include <algorithm>
#include <mutex>

namespace zcx::transport {

TransportRegistry& TransportRegistry::builtin() {
  static TransportRegistry* registry = [] {
    auto* r = new TransportRegistry();
    registerBuiltinTransports(*r);
    return r;
  }();
  return *registry;
}

void TransportRegistry::add(RegistryEntry entry) {
  entries_.push_back(std::move(entry));
  std::stable_sort(
      entries_.begin(), entries_.end(),
      [](const RegistryEntry& a, const RegistryEntry& b) { return a.priority > b.priority; });
}

std::vector<std::string> TransportRegistry::names() const {
  std::vector<std::string> n;
  for (const auto& e : entries_) n.push_back(e.name);
  return n;
}

Result<std::unique_ptr<Transport>> TransportRegistry::create(std::string_view name,
                                                             const TransportConfig& config,
                                                             std::string* why) const {
  if (name != "auto") {
    for (const auto& e : entries_) {
      if (e.name != name) continue;
      auto t = e.factory(config);
      if (!t.ok()) return t.status().withContext("transport '" + e.name + "' is not available");
      if (why) *why = "transport '" + e.name + "' requested explicitly";
      return t;
    }
    std::string known;
    for (const auto& e : entries_) known += (known.empty() ? "" : ", ") + e.name;
    return Status(StatusCode::kNotFound,
                  "unknown transport '" + std::string(name) + "'; choose auto or one of: " + known);
  }
  std::string account;
  for (const auto& e : entries_) {
    auto t = e.factory(config);
    if (t.ok()) {
      account += (account.empty() ? "" : "; ") + std::string("using ") + e.name;
      if (why) *why = "auto: " + account;
      return t;
    }
    account +=
        (account.empty() ? "" : "; ") + e.name + " unavailable (" + t.status().message() + ")";
  }
  return Status(StatusCode::kUnavailable, "no transport is available: " + account);
}

}  // namespace zcx::transport
