// The transport registry: name -> factory, and the "auto" choice.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "zcx/transport/transport.h"

namespace zcx::transport {

struct RegistryEntry {
  std::string name;
  /// Higher is tried first by "auto" (verbs 100 > ucx 10).
  int priority = 0;
  TransportFactory factory = nullptr;
};

class ZCX_EXPORT TransportRegistry {
 public:
  /// The registry with every transport built into this library.
  static TransportRegistry& builtin();

  void add(RegistryEntry entry);
  std::vector<std::string> names() const;

  /// Creates transport `name`, or for "auto" the highest-priority one that is available here;
  /// `why` (if given) receives a one-line account of the choice ("verbs: no RDMA device ...; using
  /// ucx").
  Result<std::unique_ptr<Transport>> create(std::string_view name, const TransportConfig& config,
                                            std::string* why = nullptr) const;

 private:
  std::vector<RegistryEntry> entries_;
};

/// Defined by the transport/ layer (transport/builtin.cc): adds every compiled-in transport.
void registerBuiltinTransports(TransportRegistry& registry);

}  // namespace zcx::transport
