// What this process exposed to peers for checked RMA, and the check every incoming remote access
// passes before it touches memory.
//
// Over UCX's tcp transport nothing below zcx enforces a registration: UCX emulates put/get in
// software and writes to (or reads from) whatever address a request names. So in checked mode
// (UcxSettings::checked_rma) remote writes and reads travel as active messages, and the target
// looks each one up here: the key id and its random cookie must name a live registration, the
// range must lie inside it and the registration must grant the access. Revoking an entry stops
// new accesses at once; accesses already copying into or out of the memory are counted, and the
// core waits for them (MemoryHandle::remoteAccessesInFlight) before the memory is deregistered.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "zcx/status.h"

namespace zcx::transport::ucx {

/// Why the target refused an access (sent back in the reply; 0 = granted).
enum class AccessRefusal : uint8_t {
  kNone = 0,
  kUnknownKey = 1,    ///< no such registration, wrong cookie, or revoked
  kOutOfBounds = 2,   ///< the range is not inside the registration
  kNotPermitted = 3,  ///< the registration does not grant this access
  kMalformed = 4,     ///< the request itself is inconsistent
  kInternal = 5,      ///< the target could not carry it out (e.g. UCX receive failed)
};
const char* refusalText(AccessRefusal r);

struct AccessEntry {
  uint8_t* base = nullptr;
  size_t length = 0;
  uint32_t access = 0;  ///< AccessBits
  uint64_t cookie = 0;
  ucp_mem_h memh = nullptr;  ///< for zero-copy sends out of it (read replies)
  std::atomic<uint32_t> inflight{0};
  /// A grant (Engine::expose) of a registration's entry: accesses through it count there too,
  /// so the registration's memory stays until they finished.
  std::shared_ptr<AccessEntry> parent;
  /// Set by revoke() (under the table's lock): a grant of a revoked registration is dead too.
  bool revoked = false;
  /// Usable only by the connection whose endpoint has this route key ({token, role}).
  bool scoped = false;
  uint64_t scope_token = 0;
  uint8_t scope_role = 0;
};

/// One access that passed the check: holds the entry's in-flight count until destroyed.
class AccessGuard {
 public:
  AccessGuard() = default;
  explicit AccessGuard(std::shared_ptr<AccessEntry> entry);
  AccessGuard(AccessGuard&&) noexcept = default;
  AccessGuard& operator=(AccessGuard&& other) noexcept;
  AccessGuard(const AccessGuard&) = delete;
  AccessGuard& operator=(const AccessGuard&) = delete;
  ~AccessGuard() { release(); }

  void release();
  const AccessEntry* entry() const { return entry_.get(); }

 private:
  std::shared_ptr<AccessEntry> entry_;
};

class UcxAccessTable {
 public:
  struct Grant {
    uint64_t id = 0;
    uint64_t cookie = 0;
    std::shared_ptr<AccessEntry> entry;
  };
  /// Thread-safe (called by registration, without the core's lock).
  Grant add(uint8_t* base, size_t length, uint32_t access, ucp_mem_h memh);
  /// A further entry for `parent`'s memory with `access` (a subset), usable only from the
  /// route {token, role} if `scoped`. Thread-safe.
  Grant addGrant(std::shared_ptr<AccessEntry> parent, uint32_t access, bool scoped,
                 uint64_t scope_token, uint8_t scope_role);
  /// No access starts on `id` after this returns. Thread-safe.
  void revoke(uint64_t id);

  struct Checked {
    AccessRefusal refusal = AccessRefusal::kNone;
    uint8_t* ptr = nullptr;
    ucp_mem_h memh = nullptr;
    AccessGuard guard;
  };
  /// The check of one incoming access of `length` bytes at `addr` needing `need` (AccessBits),
  /// naming the connection whose endpoint has the route key {route_token, route_role};
  /// `route_verified`: it did arrive on that endpoint (required by scoped entries).
  Checked check(uint64_t id, uint64_t cookie, uint64_t addr, uint64_t length, uint32_t need,
                uint64_t route_token, uint8_t route_role, bool route_verified);

 private:
  std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<AccessEntry>> entries_;
  uint64_t next_id_ = 1;
};

}  // namespace zcx::transport::ucx
