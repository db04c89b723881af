#include "ucx/ucx_transport.h"

#include <glog/logging.h>

#include <mutex>

#include "ucx/ucx_endpoint.h"
#include "ucx/ucx_memory.h"

namespace zcx::transport::ucx {
namespace {

/// Two-sided messages go as active messages (rendezvous when large): no hard limit in UCX,
/// this is what one receive buffer may hold.
constexpr size_t kMaxMessageSize = size_t{1} << 30;

}  // namespace

Result<std::unique_ptr<UcxTransport>> UcxTransport::create(const TransportConfig& config) {
  auto settings = parseSettings(config);
  if (!settings.ok()) return settings.status();
  auto context = UcxContext::create(*settings);
  if (!context.ok()) return context.status();
  auto worker = UcxWorker::create(std::move(context).value());
  if (!worker.ok()) return worker.status();

  std::string description = std::string("ucx ") + ucp_get_version_string();
  description += " tls=" + (settings->tls.empty() ? std::string("default") : settings->tls);
  if (!settings->net_devices.empty()) description += " devices=" + settings->net_devices;
  description += settings->checked_rma ? " rma=checked" : " rma=native";
  if (!settings->checked_rma) {
    static std::once_flag once;
    std::call_once(once, [] {
      LOG(WARNING) << "zcx ucx: rma=native over shared memory: peers write to and read from "
                      "registered memory through UCX without a check by this process, and any "
                      "process of the same user can reach all of our memory through the kernel "
                      "(CMA, ptrace) anyway. Connect only peers you trust as yourself "
                      "(docs/SECURITY.md); ucx.rma=checked makes this process check every access.";
    });
  }
  return std::unique_ptr<UcxTransport>(
      new UcxTransport(std::move(worker).value(), std::move(description)));
}

Capabilities UcxTransport::capabilities() const {
  Capabilities caps;
  caps.rma = true;
  caps.send_recv = true;
  caps.notify = true;
  caps.allocate = true;
  caps.max_message_size = kMaxMessageSize;
  caps.enforces_grants = worker_->checkedRma();
  return caps;
}

Result<std::unique_ptr<MemoryHandle>> UcxTransport::registerMemory(void* address, size_t length,
                                                                   uint32_t access) {
  auto mem = UcxMemory::map(worker_, address, length, access, /*allocate=*/false);
  if (!mem.ok()) return mem.status();
  return std::unique_ptr<MemoryHandle>(std::move(mem).value());
}

Result<std::unique_ptr<MemoryHandle>> UcxTransport::allocateMemory(size_t length, uint32_t access) {
  auto mem = UcxMemory::map(worker_, nullptr, length, access, /*allocate=*/true);
  if (!mem.ok()) return mem.status();
  return std::unique_ptr<MemoryHandle>(std::move(mem).value());
}

Result<std::unique_ptr<Endpoint>> UcxTransport::createEndpoint(const EndpointSetup& setup) {
  auto ep = UcxEndpoint::create(worker_, setup);
  if (!ep.ok()) return ep.status();
  return std::unique_ptr<Endpoint>(std::move(ep).value());
}

bool UcxTransport::arm() {
  if (worker_->hasDeferredWork()) return false;
  ucs_status_t st = ucp_worker_arm(worker_->worker());
  if (st == UCS_OK) return true;
  if (st != UCS_ERR_BUSY) LOG(WARNING) << "ucp_worker_arm: " << ucs_status_string(st);
  return false;
}

}  // namespace zcx::transport::ucx
