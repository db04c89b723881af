#include "ucx/ucx_context.h"

#include <glog/logging.h>

#include "ucx/ucx_status.h"

namespace zcx::transport::ucx {

void UcpConfigDeleter::operator()(ucp_config_t* config) const noexcept {
  if (config != nullptr) ucp_config_release(config);
}

void UcpContextDeleter::operator()(ucp_context_h context) const noexcept {
  if (context != nullptr) ucp_cleanup(context);
}

void UcpWorkerDeleter::operator()(ucp_worker_h worker) const noexcept {
  if (worker != nullptr) ucp_worker_destroy(worker);
}

Result<std::unique_ptr<UcxContext>> UcxContext::create(const UcxSettings& settings) {
  ucp_config_t* raw_config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
  if (st != UCS_OK) {
    return statusFromUcs(st, "ucp_config_read").withContext("ucx transport unavailable");
  }
  UcpConfigPtr config(raw_config);
  for (const auto& [name, value] : settings.vars) {
    st = ucp_config_modify(config.get(), name.c_str(), value.c_str());
    if (st != UCS_OK) {
      return Status(StatusCode::kInvalidArgument,
                    "ucp_config_modify(" + name + "=" + value + "): " + ucs_status_string(st));
    }
  }

  ucp_params_t params{};
  params.field_mask =
      UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  // Checked RMA leaves UCX's RMA out: without it the worker installs no handler for UCX's
  // software put/get, which would write to or read from any address a peer names.
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  if (!settings.checked_rma) params.features |= UCP_FEATURE_RMA;
  // Context-level calls (ucp_mem_map/unmap, ucp_rkey_pack) then take the context's own lock, so
  // the core registers and deregisters memory without holding its engine lock (transport.h).
  params.mt_workers_shared = 1;
  params.name = "zcx";
  ucp_context_h raw_context = nullptr;
  st = ucp_init(&params, config.get(), &raw_context);
  if (st != UCS_OK) {
    return Status(
        st == UCS_ERR_NO_DEVICE || st == UCS_ERR_NO_ELEM ? StatusCode::kUnavailable
                                                         : statusCodeFromUcs(st),
        std::string("ucp_init: ") + ucs_status_string(st) + " (check ucx.tls / ucx.net_devices)");
  }
  std::unique_ptr<UcxContext> self(new UcxContext());
  self->context_.reset(raw_context);
  self->checked_rma_ = settings.checked_rma;

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucp_worker_h raw_worker = nullptr;
  st = ucp_worker_create(self->context_.get(), &wparams, &raw_worker);
  if (st != UCS_OK) return statusFromUcs(st, "ucp_worker_create");
  self->worker_.reset(raw_worker);

  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_THREAD_MODE;
  st = ucp_worker_query(raw_worker, &attr);
  if (st == UCS_OK && attr.thread_mode != UCS_THREAD_MODE_SERIALIZED &&
      attr.thread_mode != UCS_THREAD_MODE_MULTI) {
    LOG(WARNING) << "ucx worker thread mode downgraded to " << attr.thread_mode
                 << "; progress must not race with other calls";
  }

  ucp_address_t* address = nullptr;
  size_t address_length = 0;
  st = ucp_worker_get_address(raw_worker, &address, &address_length);
  if (st != UCS_OK) return statusFromUcs(st, "ucp_worker_get_address");
  const auto* bytes = reinterpret_cast<const uint8_t*>(address);
  self->address_.assign(bytes, bytes + address_length);
  ucp_worker_release_address(raw_worker, address);

  st = ucp_worker_get_efd(raw_worker, &self->event_fd_);
  if (st != UCS_OK) {
    LOG(WARNING) << "ucp_worker_get_efd: " << ucs_status_string(st) << "; the core will poll";
    self->event_fd_ = -1;
  }
  return self;
}

}  // namespace zcx::transport::ucx
