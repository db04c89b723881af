#include "ucx/ucx_access_table.h"

#include <sys/random.h>

#include <cstring>

#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {
namespace {

uint64_t randomCookie() {
  uint64_t v = 0;
  // getrandom never fails for 8 bytes once the pool is initialised; loop over EINTR.
  while (::getrandom(&v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v))) {
  }
  return v;
}

}  // namespace

const char* refusalText(AccessRefusal r) {
  switch (r) {
    case AccessRefusal::kNone: return "granted";
    case AccessRefusal::kUnknownKey:
      return "the key names no registration the target exposes (never registered, forged, or "
             "revoked)";
    case AccessRefusal::kOutOfBounds: return "the range lies outside the registered region";
    case AccessRefusal::kNotPermitted: return "the region does not grant this access";
    case AccessRefusal::kMalformed: return "the request was malformed";
    case AccessRefusal::kInternal: return "the target failed to carry out the access";
  }
  return "refused";
}

AccessGuard::AccessGuard(std::shared_ptr<AccessEntry> entry) : entry_(std::move(entry)) {
  if (!entry_) return;
  entry_->inflight.fetch_add(1, std::memory_order_acq_rel);
  if (entry_->parent) entry_->parent->inflight.fetch_add(1, std::memory_order_acq_rel);
}

AccessGuard& AccessGuard::operator=(AccessGuard&& other) noexcept {
  if (this != &other) {
    release();
    entry_ = std::move(other.entry_);
  }
  return *this;
}

void AccessGuard::release() {
  if (!entry_) return;
  if (entry_->parent) entry_->parent->inflight.fetch_sub(1, std::memory_order_acq_rel);
  entry_->inflight.fetch_sub(1, std::memory_order_acq_rel);
  entry_.reset();
}

UcxAccessTable::Grant UcxAccessTable::add(uint8_t* base, size_t length, uint32_t access,
                                          ucp_mem_h memh) {
  auto entry = std::make_shared<AccessEntry>();
  entry->base = base;
  entry->length = length;
  entry->access = access;
  entry->cookie = randomCookie();
  entry->memh = memh;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = next_id_++;
  entries_.emplace(id, entry);
  return Grant{id, entry->cookie, std::move(entry)};
}

UcxAccessTable::Grant UcxAccessTable::addGrant(std::shared_ptr<AccessEntry> parent, uint32_t access,
                                               bool scoped, uint64_t scope_token,
                                               uint8_t scope_role) {
  auto entry = std::make_shared<AccessEntry>();
  entry->base = parent->base;
  entry->length = parent->length;
  entry->access = access & parent->access;
  entry->cookie = randomCookie();
  entry->memh = parent->memh;
  entry->parent = std::move(parent);
  entry->scoped = scoped;
  entry->scope_token = scope_token;
  entry->scope_role = scope_role;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = next_id_++;
  entries_.emplace(id, entry);
  return Grant{id, entry->cookie, std::move(entry)};
}

void UcxAccessTable::revoke(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  it->second->revoked = true;
  entries_.erase(it);
}

UcxAccessTable::Checked UcxAccessTable::check(uint64_t id, uint64_t cookie, uint64_t addr,
                                              uint64_t length, uint32_t need, uint64_t route_token,
                                              uint8_t route_role, bool route_verified) {
  Checked out;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  // The cookie comparison need not be constant-time: a wrong guess costs the peer its
  // connection's access for nothing, and the id space is per process.
  if (it == entries_.end() || it->second->cookie != cookie ||
      (it->second->parent && it->second->parent->revoked)) {
    out.refusal = AccessRefusal::kUnknownKey;
    return out;
  }
  const AccessEntry& e = *it->second;
  // A grant to another connection is, to this one, a key it was never given.
  if (e.scoped && (!route_verified || e.scope_token != route_token || e.scope_role != route_role)) {
    out.refusal = AccessRefusal::kUnknownKey;
    return out;
  }
  auto base = reinterpret_cast<uint64_t>(e.base);
  if (length == 0 || addr < base || length > e.length || addr - base > e.length - length) {
    out.refusal = AccessRefusal::kOutOfBounds;
    return out;
  }
  if ((e.access & need) != need) {
    out.refusal = AccessRefusal::kNotPermitted;
    return out;
  }
  out.ptr = e.base + (addr - base);
  out.memh = e.memh;
  out.guard = AccessGuard(it->second);  // counted before the lock drops: seen by a later revoke
  return out;
}

}  // namespace zcx::transport::ucx
