#include "engine_impl.h"
#include "zcx/memory.h"

namespace zcx {
namespace detail {

RegionState::~RegionState() {
  if (user_memory) {
    std::lock_guard<std::mutex> lock(engine->registrations_mu);
    auto it = engine->registrations.find(
        std::make_tuple(reinterpret_cast<uintptr_t>(data), size, access));
    if (it != engine->registrations.end() && it->second.expired()) engine->registrations.erase(it);
  }
  {
    std::lock_guard<std::mutex> lock(engine->exposed_mu);
    for (auto it = engine->exposed.begin(); it != engine->exposed.end();) {
      it = it->second.first == this ? engine->exposed.erase(it) : std::next(it);
    }
  }
  std::lock_guard<std::mutex> lock(engine->mu);  // transport calls are serialised
  handle.reset();
}

}  // namespace detail

uint8_t* MemoryRegion::data() const { return state_ ? state_->data : nullptr; }
size_t MemoryRegion::size() const { return state_ ? state_->size : 0; }
uint32_t MemoryRegion::access() const { return state_ ? state_->access : 0; }

RegionDescriptor MemoryRegion::descriptor() const {
  RegionDescriptor d;
  if (!state_) return d;
  d.transport = std::string(state_->engine->transport->name());
  d.address = reinterpret_cast<uint64_t>(state_->data);
  d.length = state_->size;
  d.access = state_->access;
  d.key = state_->handle->packedKey();
  return d;
}

}  // namespace zcx
