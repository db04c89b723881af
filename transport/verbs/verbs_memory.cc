#include "verbs/verbs_memory.h"

#include "verbs/verbs_status.h"
#include "verbs/verbs_wire.h"

#include <glog/logging.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

namespace zcx::transport::verbs {
namespace {

std::string memlockText() {
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return "RLIMIT_MEMLOCK unknown";
  if (rl.rlim_cur == RLIM_INFINITY) return "RLIMIT_MEMLOCK is unlimited";
  return "RLIMIT_MEMLOCK is " + std::to_string(rl.rlim_cur / 1024) + " KiB";
}

bool memlockLimited() {
  rlimit rl{};
  return getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY;
}

}  // namespace

int ibvAccessFlags(uint32_t access) {
  int flags = IBV_ACCESS_LOCAL_WRITE;
  if (access & kAccessRemoteRead) flags |= IBV_ACCESS_REMOTE_READ;
  if (access & kAccessRemoteWrite) flags |= IBV_ACCESS_REMOTE_WRITE;
  return flags;
}

Result<std::unique_ptr<VerbsMemory>> VerbsMemory::create(ibv_pd* pd, void* address, size_t length,
                                                         uint32_t access, uint64_t max_mr_size,
                                                         bool memory_windows) {
  if (address == nullptr || length == 0) {
    return Status(StatusCode::kInvalidArgument,
                  "cannot register an empty region (address " +
                      std::to_string(reinterpret_cast<uintptr_t>(address)) + ", length " +
                      std::to_string(length) + ")");
  }
  if ((access & ~uint32_t{kAccessRemoteRead | kAccessRemoteWrite}) != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "unknown access bits " + std::to_string(access) + " for registration");
  }
  if (max_mr_size != 0 && length > max_mr_size) {
    return Status(StatusCode::kOutOfRange, "region of " + std::to_string(length) +
                                               " bytes is larger than the device's max_mr_size (" +
                                               std::to_string(max_mr_size) +
                                               " bytes); register it in smaller pieces");
  }
  // No remote rights here: an rkey guessed by a peer opens nothing (see packedKey()).
  const bool windows = memory_windows && access != kAccessLocal;
  errno = 0;
  MrPtr mr(
      ibv_reg_mr(pd, address, length, IBV_ACCESS_LOCAL_WRITE | (windows ? IBV_ACCESS_MW_BIND : 0)));
  if (!mr) {
    const int err = errno;
    std::ostringstream msg;
    msg << "ibv_reg_mr of " << length << " bytes at " << address << " failed (" << errnoText(err)
        << ")";
    if ((err == ENOMEM || err == EFAULT || err == EPERM) && memlockLimited()) {
      msg << "; " << memlockText()
          << ", which limits how much memory can be pinned: raise it (`ulimit -l unlimited`, "
             "or memlock in /etc/security/limits.conf / LimitMEMLOCK for systemd)";
      return Status(StatusCode::kResourceExhausted, msg.str());
    }
    if (err == ENOMEM) return Status(StatusCode::kResourceExhausted, msg.str());
    if (err == EFAULT) {
      msg << "; the range is not mapped memory of this process";
      return Status(StatusCode::kInvalidArgument, msg.str());
    }
    return Status(StatusCode::kInternal, msg.str());
  }
  return std::unique_ptr<VerbsMemory>(
      new VerbsMemory(address, length, access, std::move(mr), nullptr, windows));
}

Result<std::unique_ptr<VerbsMemory>> VerbsMemory::allocate(ibv_pd* pd, size_t length,
                                                           uint32_t access, uint64_t max_mr_size,
                                                           bool memory_windows) {
  if (length == 0) return Status(StatusCode::kInvalidArgument, "cannot allocate 0 bytes");
  const size_t align = length >= (size_t{2} << 20) ? (size_t{2} << 20) : 4096;
  const size_t rounded = (length + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (p == nullptr) {
    return Status(StatusCode::kResourceExhausted,
                  "cannot allocate " + std::to_string(length) + " bytes for registration");
  }
  std::memset(p, 0, rounded);  // touch the pages so registration pins real memory
  auto r = create(pd, p, length, access, max_mr_size, memory_windows);
  if (!r.ok()) {
    std::free(p);
    return r.status();
  }
  (*r)->owned_ = p;
  return r;
}

VerbsMemory::~VerbsMemory() {
  key_mr_.reset();
  mr_.reset();
  if (owned_ != nullptr) std::free(owned_);
}

std::vector<uint8_t> VerbsMemory::packedKey() const {
  if ((access_ & (kAccessRemoteRead | kAccessRemoteWrite)) == 0) return {};
  std::lock_guard<std::mutex> lock(key_mu_);
  if (!key_mr_) {
    errno = 0;
    key_mr_.reset(ibv_reg_mr(mr_->pd, address_, length_, ibvAccessFlags(access_)));
    if (!key_mr_) {
      LOG(ERROR) << "verbs: registering the remote key of " << length_
                 << " bytes failed (ibv_reg_mr: " << errnoText(errno)
                 << "); the descriptor carries no key";
      return {};
    }
  }
  return packKey(key_mr_->rkey, reinterpret_cast<uintptr_t>(address_), length_);
}

VerbsGrant::VerbsGrant(std::shared_ptr<ibv_mr> mr, MwPtr mw, uint32_t rkey, uint64_t addr,
                       uint64_t length, uint32_t access)
    : mr_(std::move(mr)),
      window_(mw ? std::make_shared<MemoryWindow>(std::move(mw)) : nullptr),
      rkey_(rkey),
      addr_(addr),
      length_(length),
      access_(access) {}

VerbsGrant::~VerbsGrant() {
  if (window_) window_->invalidate();  // before the registration under it goes
}

std::vector<uint8_t> VerbsGrant::packedKey() const { return packKey(rkey_, addr_, length_); }

Result<std::unique_ptr<RemoteGrant>> VerbsMemory::grant(uint32_t access,
                                                        std::optional<ConnectionScope> only) {
  ZCX_RETURN_IF_ERROR(checkGrantAccess("verbs", access, access_));
  const auto addr = reinterpret_cast<uintptr_t>(address_);
  if (!only.has_value() || !memory_windows_) {
    errno = 0;
    MrPtr mr(ibv_reg_mr(mr_->pd, address_, length_, ibvAccessFlags(access)));
    if (!mr) {
      return Status(StatusCode::kResourceExhausted, "verbs: registering an exposure of " +
                                                        std::to_string(length_) +
                                                        " bytes: ibv_reg_mr: " + errnoText(errno));
    }
    const uint32_t rkey = mr->rkey;
    // Scoped without windows: only that peer is told the rkey, but the NIC does not check who
    // uses it.
    return std::unique_ptr<RemoteGrant>(new VerbsGrant(std::shared_ptr<ibv_mr>(std::move(mr)),
                                                       nullptr, rkey, addr, length_, access));
  }
  errno = 0;
  MwPtr mw(ibv_alloc_mw(mr_->pd, IBV_MW_TYPE_2));
  if (!mw) {
    return Status(StatusCode::kResourceExhausted,
                  std::string("verbs: ibv_alloc_mw(type 2): ") + errnoText(errno));
  }
  const uint32_t rkey = ibv_inc_rkey(mw->rkey);
  // Bound over mr_ itself (MW_BIND, no remote rights), which outlives every grant of it.
  std::shared_ptr<ibv_mr> base(mr_.get(), [](ibv_mr*) {});
  return std::unique_ptr<RemoteGrant>(
      new VerbsGrant(std::move(base), std::move(mw), rkey, addr, length_, access));
}

Result<std::unique_ptr<VerbsRemoteKey>> unpackKey(std::span<const uint8_t> bytes) {
  auto k = decodeKey(bytes);
  if (!k.ok()) return k.status();
  return std::make_unique<VerbsRemoteKey>(k->rkey, k->addr, k->length);
}

}  // namespace zcx::transport::verbs
