#include "verbs/verbs_rails.h"

#include <glog/logging.h>
#include <sys/epoll.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "verbs/verbs_rails_endpoint.h"
#include "verbs/verbs_rails_wire.h"
#include "verbs/verbs_status.h"

namespace zcx::transport::verbs {

Result<std::vector<std::string>> parseDeviceList(const std::string& spec) {
  std::vector<std::string> out;
  if (spec == "all") {
    int num = 0;
    IbvDeviceListPtr list(ibv_get_device_list(&num));
    for (int i = 0; list && i < num; ++i) out.emplace_back(ibv_get_device_name(list.get()[i]));
    // Rails pair by index across nodes: every node must list them in the same order. The
    // factory keeps the first kMaxRails of them that work.
    std::sort(out.begin(), out.end());
    return out;
  }
  std::set<std::string> seen;
  std::stringstream in(spec);
  for (std::string name; std::getline(in, name, ',');) {
    if (name.empty() || !seen.insert(name).second) {
      return Status(StatusCode::kInvalidArgument,
                    "device list '" + spec + "': every entry must be a distinct device name");
    }
    out.push_back(name);
  }
  if (out.empty() || out.size() > kMaxRails || spec.back() == ',') {
    return Status(StatusCode::kInvalidArgument, "device list '" + spec + "' must name 1 to " +
                                                    std::to_string(kMaxRails) + " devices");
  }
  return out;
}

// ------------------------------------------------------------------ memory

RailsMemory::~RailsMemory() {
  // Rail 0 may own the memory (allocateMemory): the other registrations go first.
  for (size_t k = rails_.size(); k-- > 0;) rails_[k].reset();
}

std::vector<uint8_t> RailsMemory::packedKey() const {
  std::vector<std::vector<uint8_t>> keys;
  for (const auto& r : rails_) {
    keys.push_back(r->packedKey());
    if (keys.back().empty()) return {};  // local-only memory
  }
  return packRails(keys);
}

void RailsMemory::revokeRemoteAccess() {
  for (const auto& r : rails_) r->revokeRemoteAccess();
}

uint32_t RailsMemory::remoteAccessesInFlight() const {
  uint32_t n = 0;
  for (const auto& r : rails_) n += r->remoteAccessesInFlight();
  return n;
}

Result<std::unique_ptr<RemoteGrant>> RailsMemory::grant(uint32_t access,
                                                        std::optional<ConnectionScope> only) {
  std::vector<std::unique_ptr<RemoteGrant>> grants;
  for (const auto& r : rails_) {
    auto g = r->grant(access, only);
    if (!g.ok()) return g.status();
    grants.push_back(std::move(*g));
  }
  return std::unique_ptr<RemoteGrant>(new RailsGrant(std::move(grants)));
}

std::vector<uint8_t> RailsGrant::packedKey() const {
  std::vector<std::vector<uint8_t>> keys;
  for (const auto& g : rails_) keys.push_back(g->packedKey());
  return packRails(keys);
}

bool RailsGrant::needsBind() const {
  return std::any_of(rails_.begin(), rails_.end(), [](const auto& g) { return g->needsBind(); });
}

// ------------------------------------------------------------------ transport

Result<std::unique_ptr<RailsTransport>> RailsTransport::create(
    std::vector<std::unique_ptr<VerbsTransport>> rails) {
  if (rails.size() < 2 || rails.size() > kMaxRails) {
    return Status(StatusCode::kInvalidArgument,
                  "a multi-rail transport needs 2 to " + std::to_string(kMaxRails) + " rails");
  }
  std::unique_ptr<RailsTransport> t(new RailsTransport());
  t->rails_ = std::move(rails);
  t->bytes_ = std::make_unique<std::atomic<uint64_t>[]>(t->rails_.size());
  t->slice_size_ = t->rails_[0]->options().slice_size;
  t->epoll_fd_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (t->epoll_fd_.get() < 0) {
    return Status(StatusCode::kInternal, "epoll_create1 failed (" + errnoText(errno) + ")");
  }
  for (const auto& r : t->rails_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = r->eventFd();
    if (epoll_ctl(t->epoll_fd_.get(), EPOLL_CTL_ADD, r->eventFd(), &ev) != 0) {
      return Status(StatusCode::kInternal, "epoll_ctl failed (" + errnoText(errno) + ")");
    }
  }
  LOG(INFO) << "verbs transport: " << t->description();
  return t;
}

RailsTransport::~RailsTransport() {
  for (size_t k = rails_.size(); k-- > 0;) rails_[k].reset();
}

Capabilities RailsTransport::capabilities() const {
  Capabilities c = rails_[0]->capabilities();
  for (const auto& r : rails_) {
    // Peer lists are enforced only if every rail enforces them.
    c.enforces_grants = c.enforces_grants && r->capabilities().enforces_grants;
    c.event_fd_covers_completions =
        c.event_fd_covers_completions && r->capabilities().event_fd_covers_completions;
  }
  return c;
}

std::string RailsTransport::description() const {
  std::ostringstream s;
  s << "verbs rails=" << rails_.size() << " slice=" << slice_size_;
  for (size_t k = 0; k < rails_.size(); ++k)
    s << (k == 0 ? ": " : " | ") << rails_[k]->description();
  return s.str();
}

Result<std::unique_ptr<MemoryHandle>> RailsTransport::registerMemory(void* address, size_t length,
                                                                     uint32_t access) {
  std::vector<std::unique_ptr<VerbsMemory>> regs;
  for (const auto& r : rails_) {
    auto m = r->registerMemory(address, length, access);
    if (!m.ok()) {
      return Status(m.status().code(), r->device().name + ": " + m.status().message());
    }
    regs.emplace_back(static_cast<VerbsMemory*>(m->release()));
  }
  return std::unique_ptr<MemoryHandle>(new RailsMemory(std::move(regs)));
}

Result<std::unique_ptr<MemoryHandle>> RailsTransport::allocateMemory(size_t length,
                                                                     uint32_t access) {
  auto first = rails_[0]->allocateMemory(length, access);
  if (!first.ok()) return first.status();
  std::vector<std::unique_ptr<VerbsMemory>> regs;
  regs.emplace_back(static_cast<VerbsMemory*>(first->release()));
  for (size_t k = 1; k < rails_.size(); ++k) {
    auto m = rails_[k]->registerMemory(regs[0]->address(), length, access);
    if (!m.ok()) {
      RailsMemory cleanup(std::move(regs));  // deregisters in the right order
      return Status(m.status().code(), rails_[k]->device().name + ": " + m.status().message());
    }
    regs.emplace_back(static_cast<VerbsMemory*>(m->release()));
  }
  return std::unique_ptr<MemoryHandle>(new RailsMemory(std::move(regs)));
}

std::vector<uint8_t> RailsTransport::localAddress() const {
  std::vector<std::vector<uint8_t>> addrs;
  for (const auto& r : rails_) addrs.push_back(r->localAddress());
  return packRails(addrs);
}

Result<std::unique_ptr<Endpoint>> RailsTransport::createEndpoint(const EndpointSetup& setup) {
  if (setup.events == nullptr) {
    return Status(StatusCode::kInvalidArgument, "createEndpoint without events");
  }
  std::vector<std::vector<uint8_t>> peer;
  if (isRailsBlob(setup.peer_address)) {
    auto r = unpackRails(setup.peer_address);
    if (!r.ok()) return r.status();
    for (auto e : *r) peer.emplace_back(e.begin(), e.end());
  } else {
    peer.push_back(setup.peer_address);  // a single-rail peer: one lane
  }
  auto ep = RailsEndpoint::create(this, setup, peer);
  if (!ep.ok()) return ep.status();
  return std::unique_ptr<Endpoint>(std::move(*ep));
}

int RailsTransport::progress() {
  int n = 0;
  for (const auto& r : rails_) n += r->progress();
  if (!scheduled_.empty()) {
    std::vector<RailsEndpoint*> now;
    now.swap(scheduled_);
    driving_ = &now;
    for (RailsEndpoint* ep : now) {
      if (ep != nullptr) n += ep->drive();  // forget() nulls endpoints closed meanwhile
    }
    driving_ = nullptr;
  }
  return n;
}

bool RailsTransport::arm() {
  if (!scheduled_.empty()) return false;
  for (const auto& r : rails_) {
    if (!r->arm()) return false;
  }
  return true;
}

std::vector<DeviceBytes> RailsTransport::deviceBytes() const {
  std::vector<DeviceBytes> out;
  for (size_t k = 0; k < rails_.size(); ++k) {
    out.push_back({rails_[k]->device().name, bytes_[k].load(std::memory_order_relaxed)});
  }
  return out;
}

void RailsTransport::schedule(RailsEndpoint* ep) {
  if (std::find(scheduled_.begin(), scheduled_.end(), ep) == scheduled_.end()) {
    scheduled_.push_back(ep);
  }
}

void RailsTransport::forget(RailsEndpoint* ep) {
  std::erase(scheduled_, ep);
  if (driving_ != nullptr)
    std::replace(driving_->begin(), driving_->end(), ep, static_cast<RailsEndpoint*>(nullptr));
}

}  // namespace zcx::transport::verbs
