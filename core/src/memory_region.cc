#include "engine_impl.h"
#include "zcx/memory.h"

namespace zcx {
namespace detail {

RegionDescriptor RegionState::describe(uint32_t with_access, std::vector<uint8_t> key) const {
  RegionDescriptor d;
  d.transport = std::string(engine->transport->name());
  d.address = reinterpret_cast<uint64_t>(data);
  d.length = size;
  d.access = with_access;
  d.key = std::move(key);
  return d;
}

RegionState::~RegionState() {
  if (user_memory) {
    std::lock_guard<std::mutex> lock(engine->registrations_mu);
    auto it = engine->registrations.find(
        std::make_tuple(reinterpret_cast<uintptr_t>(data), size, access));
    if (it != engine->registrations.end() && it->second.expired()) engine->registrations.erase(it);
  }
  {
    // Normally retireRegion() did this already; the exposures' grants go before the handle.
    std::vector<std::shared_ptr<EngineImpl::Exposure>> gone;
    std::vector<std::shared_ptr<transport::RemoteGrant>> grants;
    (void)engine->unexposeRegion(this, &gone, &grants);
  }
  // Not under the engine lock: transports deregister safely from any thread (transport.h),
  // and every operation that used the memory has been released by the transport (RegionPin).
  handle.reset();
}

}  // namespace detail

MemoryRegion::MemoryRegion(std::shared_ptr<detail::RegionState> state) : state_(std::move(state)) {
  if (state_) state_->handles.fetch_add(1, std::memory_order_relaxed);
}

MemoryRegion& MemoryRegion::operator=(MemoryRegion&& other) noexcept {
  if (this != &other) {
    MemoryRegion old(std::move(*this));  // released (and maybe revoked) at the end of scope
    state_ = std::move(other.state_);
  }
  return *this;
}

MemoryRegion::~MemoryRegion() {
  if (!state_) return;
  if (state_->handles.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // The last handle: peers lose the region now (names, cache, remote access), even while
  // operations still pin the registration.
  state_->engine->retireRegion(*state_);
  if (state_->inflight.load(std::memory_order_acquire) != 0 ||
      (state_->handle && state_->handle->remoteAccessesInFlight() != 0)) {
    state_->engine->revokeRegion(*state_);
  }
}

uint8_t* MemoryRegion::data() const { return state_ ? state_->data : nullptr; }
size_t MemoryRegion::size() const { return state_ ? state_->size : 0; }
uint32_t MemoryRegion::access() const { return state_ ? state_->access : 0; }

RegionDescriptor MemoryRegion::descriptor() const {
  if (!state_) return RegionDescriptor{};
  return state_->describe(state_->access, state_->handle->packedKey());
}

}  // namespace zcx
