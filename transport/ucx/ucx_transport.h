// The UCX Transport: one ucp_context + one ucp_worker; endpoints from exchanged worker addresses.
#pragma once

#include <memory>
#include <string>

#include "ucx/ucx_key_format.h"
#include "ucx/ucx_params.h"
#include "ucx/ucx_worker.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

class UcxTransport final : public Transport {
 public:
  static Result<std::unique_ptr<UcxTransport>> create(const TransportConfig& config);

  std::string_view name() const override { return "ucx"; }
  Capabilities capabilities() const override;
  std::string description() const override { return description_; }

  Result<std::unique_ptr<MemoryHandle>> registerMemory(void* address, size_t length,
                                                       uint32_t access) override;
  Result<std::unique_ptr<MemoryHandle>> allocateMemory(size_t length, uint32_t access) override;

  std::vector<uint8_t> localAddress() const override {
    return frameAddress(worker_->ucx().address());
  }
  Result<std::unique_ptr<Endpoint>> createEndpoint(const EndpointSetup& setup) override;

  int progress() override { return worker_->progress(); }
  int eventFd() const override { return worker_->ucx().eventFd(); }
  bool arm() override;

 private:
  explicit UcxTransport(std::shared_ptr<UcxWorker> worker, std::string description)
      : worker_(std::move(worker)), description_(std::move(description)) {}

  std::shared_ptr<UcxWorker> worker_;
  std::string description_;
};

}  // namespace zcx::transport::ucx
