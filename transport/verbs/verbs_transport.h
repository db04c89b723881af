// VerbsTransport: device + PD + one CQ + rdma_cm listener; owns no endpoints (the core does),
// but knows them by serial number to route CQEs and cm events.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "verbs/verbs_device.h"
#include "verbs/verbs_params.h"
#include "verbs/verbs_resources.h"
#include "verbs/verbs_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

class VerbsEndpoint;

class VerbsTransport final : public Transport {
 public:
  static constexpr size_t kMaxMessageSize = size_t{1} << 20;
  static constexpr size_t kDefaultMessageSize = size_t{64} << 10;

  static Result<std::unique_ptr<VerbsTransport>> create(const TransportConfig& config);
  ~VerbsTransport() override;

  std::string_view name() const override { return "verbs"; }
  Capabilities capabilities() const override;
  std::string description() const override;
  Result<std::unique_ptr<MemoryHandle>> registerMemory(void* address, size_t length,
                                                       uint32_t access) override;
  Result<std::unique_ptr<MemoryHandle>> allocateMemory(size_t length, uint32_t access) override;
  std::vector<uint8_t> localAddress() const override;
  Result<std::unique_ptr<Endpoint>> createEndpoint(const EndpointSetup& setup) override;
  int progress() override;
  int eventFd() const override { return epoll_fd_.get(); }
  bool arm() override;

  // ---- for VerbsEndpoint
  const DeviceChoice& device() const { return device_; }
  /// The device binds type-2 memory windows (for connection-scoped grants).
  bool memoryWindows() const {
    return (device_.device_attr.device_cap_flags & IBV_DEVICE_MEM_WINDOW_TYPE_2B) != 0 &&
           device_.device_attr.max_mw > 0;
  }
  const VerbsOptions& options() const { return options_; }
  ibv_pd* pd() const { return pd_.get(); }
  ibv_cq* cq() const { return cq_.get(); }
  rdma_event_channel* eventChannel() const { return channel_.get(); }
  /// The chosen GID's IP address (port 0): the source address of active connections.
  const CmAddress& localIp() const { return device_.address; }
  /// Reserves CQ entries for a QP (grows the CQ if needed); kResourceExhausted if it cannot.
  Status reserveCq(uint32_t entries);
  void releaseCq(uint32_t entries);
  /// The endpoint is gone or closed: stop routing events to it.
  void forget(uint32_t serial, uint64_t passive_token);
  /// Routes the device's async events for QP `qp_num` to endpoint `serial` (until unregisterQp).
  void registerQp(uint32_t qp_num, uint32_t serial);
  void unregisterQp(uint32_t qp_num);
  /// close(): waits (at most `limit`) for the CQE of `marker_wr_id`, the last WR posted to an
  /// endpoint's QP after it was moved to ERR. CQEs of endpoint `serial` are dropped (its ops are
  /// already completed); other endpoints' CQEs are kept for the next progress(). True if the
  /// marker arrived (every earlier WR of the QP has been flushed).
  bool drainFlushed(uint32_t serial, uint64_t marker_wr_id, std::chrono::milliseconds limit);

 private:
  struct Stashed {
    CmIdPtr id;
    ConnectData data;
    uint8_t initiator_depth = 0;
    uint8_t responder_resources = 0;
    std::chrono::steady_clock::time_point deadline;
  };

  VerbsTransport() = default;
  int processAsyncEvents();
  int processCmEvents();
  int pollCq();
  void handleWc(const ibv_wc& wc);
  void drainCompChannel();
  void onConnectRequest(rdma_cm_id* id, const void* private_data, size_t private_len,
                        uint8_t initiator_depth, uint8_t responder_resources);
  void expireStash();

  DeviceChoice device_;
  VerbsOptions options_;
  // Declaration order = reverse destruction order; the destructor also resets explicitly.
  EventChannelPtr channel_;
  PdPtr pd_;
  CompChannelPtr comp_channel_;
  CqPtr cq_;
  CmIdPtr listen_id_;
  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;  ///< eventfd: the async event hub queued events for us
  bool async_subscribed_ = false;
  CmAddress listen_addr_;
  uint32_t cq_capacity_ = 0;
  uint32_t cq_reserved_ = 0;
  unsigned unacked_cq_events_ = 0;
  uint32_t next_serial_ = 1;
  std::unordered_map<uint32_t, VerbsEndpoint*> endpoints_;
  std::map<uint64_t, uint32_t> waiting_passive_;  ///< token -> serial of a passive endpoint
  std::map<uint64_t, Stashed> stash_;             ///< token -> connect request nobody claimed yet
  std::vector<ibv_wc> wc_stash_;                  ///< CQEs arm() found; handled by progress()

  /// Whether this progress() reads the event fds (cm, async, completion channel, wake): always
  /// the first time after arm() (a sleep may have ended on one of them), otherwise at most once
  /// per kFdCheckPeriod. Each read is a system call that finds nothing while a busy loop polls
  /// the CQ (which needs none): measured between two soft-RoCE guests, four of them per round
  /// took a quarter to half of the zcx client's CPU time in write_bw, and every 50 us they still
  /// added 11-16 % to the 8 B latencies in one guest (perf/RESULTS.md). What they find while busy
  /// (a cm or async event) can wait a millisecond; before a sleep they are read at once.
  bool fdsDue();
  static constexpr std::chrono::microseconds kFdCheckPeriod{1000};
  bool check_fds_next_ = true;
  std::chrono::steady_clock::time_point last_fd_check_{};
};

}  // namespace zcx::transport::verbs
