// What EngineOptions::metadata means for an engine: the checks of its options, the address it
// publishes and the value of a region's key (MetadataStore does the talking to etcd).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "metadata_store.h"
#include "zcx/options.h"
#include "zcx/status.h"

namespace zcx::detail {

/// The metadata options of `o` (nothing to check without `metadata`).
Status validateMetadataOptions(const EngineOptions& o);
MetadataConfig metadataConfig(const EngineOptions& o);
/// "host:port" peers are told: advertise_host (or the listen host) with the bound port.
std::string advertisedAddress(const EngineOptions& o, std::string_view listen_host, uint16_t port);
/// "size=<bytes> access=<none|r|w|rw>".
std::string regionValue(uint64_t size, uint32_t access);
/// Whether connect() should look `target` up in etcd rather than dial it: it has no ':'.
inline bool isEngineName(std::string_view target) {
  return target.find(':') == std::string_view::npos;
}

}  // namespace zcx::detail
