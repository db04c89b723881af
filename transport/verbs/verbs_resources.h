// RAII owners for verbs and rdma_cm objects. Every deleter is noexcept and only logs a failure
// (a destructor cannot report it anywhere else).
#pragma once

#include <glog/logging.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "verbs/verbs_status.h"

namespace zcx::transport::verbs {

struct PdDeleter {
  void operator()(ibv_pd* pd) const noexcept {
    if (int rc = ibv_dealloc_pd(pd); rc != 0) LOG(WARNING) << "ibv_dealloc_pd: " << errnoText(rc);
  }
};
struct CqDeleter {
  void operator()(ibv_cq* cq) const noexcept {
    if (int rc = ibv_destroy_cq(cq); rc != 0) LOG(WARNING) << "ibv_destroy_cq: " << errnoText(rc);
  }
};
struct CompChannelDeleter {
  void operator()(ibv_comp_channel* ch) const noexcept {
    if (int rc = ibv_destroy_comp_channel(ch); rc != 0) {
      LOG(WARNING) << "ibv_destroy_comp_channel: " << errnoText(rc);
    }
  }
};
struct MrDeleter {
  void operator()(ibv_mr* mr) const noexcept {
    if (int rc = ibv_dereg_mr(mr); rc != 0) LOG(WARNING) << "ibv_dereg_mr: " << errnoText(rc);
  }
};
struct MwDeleter {
  void operator()(ibv_mw* mw) const noexcept {
    if (int rc = ibv_dealloc_mw(mw); rc != 0) LOG(WARNING) << "ibv_dealloc_mw: " << errnoText(rc);
  }
};
struct EventChannelDeleter {
  void operator()(rdma_event_channel* ch) const noexcept { rdma_destroy_event_channel(ch); }
};
/// A cm id; destroys its QP (if rdma_create_qp made one) first. rdma_destroy_id blocks until
/// every event of the id that was retrieved has been acked: we ack every event at once.
struct CmIdDeleter {
  void operator()(rdma_cm_id* id) const noexcept {
    if (id->qp != nullptr) rdma_destroy_qp(id);
    if (rdma_destroy_id(id) != 0) LOG(WARNING) << "rdma_destroy_id: " << errnoText(errno);
  }
};
/// rdma_get_devices() list; the contexts in it belong to librdmacm and stay open.
struct DeviceListDeleter {
  void operator()(ibv_context** list) const noexcept { rdma_free_devices(list); }
};
struct IbvDeviceListDeleter {
  void operator()(ibv_device** list) const noexcept { ibv_free_device_list(list); }
};

using PdPtr = std::unique_ptr<ibv_pd, PdDeleter>;
using CqPtr = std::unique_ptr<ibv_cq, CqDeleter>;
using CompChannelPtr = std::unique_ptr<ibv_comp_channel, CompChannelDeleter>;
using MrPtr = std::unique_ptr<ibv_mr, MrDeleter>;
using MwPtr = std::unique_ptr<ibv_mw, MwDeleter>;
using EventChannelPtr = std::unique_ptr<rdma_event_channel, EventChannelDeleter>;
using CmIdPtr = std::unique_ptr<rdma_cm_id, CmIdDeleter>;
using DeviceListPtr = std::unique_ptr<ibv_context*, DeviceListDeleter>;
using IbvDeviceListPtr = std::unique_ptr<ibv_device*, IbvDeviceListDeleter>;

/// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

}  // namespace zcx::transport::verbs
