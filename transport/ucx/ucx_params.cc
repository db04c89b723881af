#include "ucx/ucx_params.h"

#include <cstdlib>

namespace zcx::transport::ucx {
namespace {

constexpr std::string_view kPrefix = "ucx.";

bool isUcxVarName(std::string_view name) {
  if (name.empty()) return false;
  if (name.front() < 'A' || name.front() > 'Z') return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

/// True if `tls` is an explicit list ("a,b", not empty, not "^exclusions") and `pred` holds for
/// any of its transports (every one, if `all`). Names are compared without a leading '\'
/// ("\posix": the name without aliasing) and without a ":suffix" ("posix:aux").
template <typename Pred>
bool explicitListMatches(std::string_view tls, bool all, Pred pred) {
  size_t start = 0;
  while (start <= tls.size()) {
    size_t end = tls.find(',', start);
    if (end == std::string_view::npos) end = tls.size();
    std::string_view t = tls.substr(start, end - start);
    if (t.starts_with('\\')) t.remove_prefix(1);
    t = t.substr(0, t.find(':'));
    if (pred(t) != all) return !all;
    start = end + 1;
  }
  return all;
}

bool isExplicitList(std::string_view tls) { return !tls.empty() && tls.front() != '^'; }

/// True unless the TLS list names transports and none of them is a UCX memory mapper (posix,
/// sysv, xpmem, or an alias of them): only their iface configuration has MM_ERROR_HANDLING (UCX
/// 1.13 src/uct/sm/mm/base/mm_iface.c), and a cached variable no opened iface takes makes
/// ucp_worker_create warn "invalid configuration: MM_ERROR_HANDLING=y" (cma and knem lack it).
bool mayUseMemoryMapper(std::string_view tls) {
  return !isExplicitList(tls) || explicitListMatches(tls, false, [](std::string_view t) {
    return t == "all" || t == "mm" || t == "sm" || t == "shm" || t == "posix" || t == "sysv" ||
           t == "xpmem";
  });
}

/// True unless the TLS list names transports and tcp is not among them (the tcp iface's variables
/// may only be set when it can be opened: see mayUseMemoryMapper).
bool mayUseTcp(std::string_view tls) {
  return !isExplicitList(tls) || explicitListMatches(tls, false, [](std::string_view t) {
    return t == "all" || t == "tcp";
  });
}

/// True if the TLS list names only shared-memory transports (and self): no peer on another
/// host can be reached with them.
bool sharedMemoryOnly(std::string_view tls) {
  return isExplicitList(tls) && explicitListMatches(tls, true, [](std::string_view t) {
           return t == "self" || t == "sm" || t == "shm" || t == "mm" || t == "posix" ||
                  t == "sysv" || t == "xpmem" || t == "cma" || t == "knem";
         });
}

}  // namespace

Result<UcxSettings> parseSettings(const TransportConfig& config) {
  UcxSettings settings;
  // Peer error handling over posix/sysv needs it (UCX default n: ep creation fails otherwise).
  // Inserted first so an explicit ucx.MM_ERROR_HANDLING overrides it.
  settings.vars.emplace_back("MM_ERROR_HANDLING", "y");
  bool have_devices = false;
  std::string rma = "auto";
  for (const auto& [key, value] : config.params) {
    std::string_view k(key);
    if (k == "ucx.rma") {
      if (value != "auto" && value != "checked" && value != "native") {
        return Status(StatusCode::kInvalidArgument,
                      "ucx.rma must be checked, native or auto (got '" + value + "')");
      }
      rma = value;
    } else if (k == "ucx.tls") {
      settings.tls = value;
      settings.vars.emplace_back("TLS", value);
    } else if (k == "ucx.net_devices") {
      settings.net_devices = value;
      have_devices = true;
      settings.vars.emplace_back("NET_DEVICES", value);
    } else if (k.starts_with(kPrefix) && isUcxVarName(k.substr(kPrefix.size()))) {
      std::string var(k.substr(kPrefix.size()));
      if (var == "TLS") settings.tls = value;
      if (var == "NET_DEVICES") {
        settings.net_devices = value;
        have_devices = true;
      }
      settings.vars.emplace_back(std::move(var), value);
    } else {
      return Status(StatusCode::kInvalidArgument,
                    "unknown ucx transport parameter '" + key +
                        "' (known: ucx.tls, ucx.net_devices, ucx.rma, ucx.<UCX_VARIABLE> such as "
                        "ucx.RNDV_THRESH)");
    }
  }
  if (!have_devices && !config.device.empty()) {
    settings.net_devices = config.device;
    settings.vars.emplace_back("NET_DEVICES", config.device);
  }
  // Without ucx.tls, UCX takes the transports from the environment (ucp_config_read).
  const char* env_tls = settings.tls.empty() ? std::getenv("UCX_TLS") : nullptr;
  // Not `cond ? env_tls : settings.tls`: that makes a temporary std::string the view outlives.
  std::string_view effective_tls =
      env_tls != nullptr ? std::string_view(env_tls) : std::string_view(settings.tls);
  if (!mayUseMemoryMapper(effective_tls)) {
    settings.vars.erase(settings.vars.begin());
  }
  settings.checked_rma = rma == "checked" || (rma == "auto" && !sharedMemoryOnly(effective_tls));
  if (settings.checked_rma && mayUseTcp(effective_tls)) {
    // Our worker address must not offer tcp put_zcopy: a peer's stock UCP would use it to write
    // to any address of ours (uct_tcp handles PUT requests without consulting registrations).
    settings.vars.emplace_back("PUT_ENABLE", "n");  // uct_tcp's UCX_TCP_PUT_ENABLE
  }
  return settings;
}

}  // namespace zcx::transport::ucx
