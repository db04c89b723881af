// The record of one posted operation (a write batch, a read batch or a send).
//
// Records belong to the worker (UcxWorker), not to the endpoint: UCX may call a request's
// callback after the endpoint closed (force close cancels them), so a record lives until both
// its user Completion was delivered and every UCX request on it called back.
#pragma once

#include <cstdint>
#include <vector>

#include "ucx/ucx_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

class UcxEndpoint;
class UcxWorker;
struct OpRecord;

/// A record as it was when referenced: a reference whose generation no longer matches is stale
/// (the record completed and may have been reused).
struct OrphanRef {
  OpRecord* rec = nullptr;
  uint64_t generation = 0;
};

struct OpRecord {
  /// kWireup: the endpoint's first flush, which completes once UCX wireup has finished; it has
  /// no user Completion (it moves the endpoint from kConnecting to kReady).
  /// kFlush: a flush group, one ucp_ep_flush_nbx covering the puts of every write in `members`
  /// (writes posted while another flush was in flight, UcxEndpoint::joinGroup); no user
  /// Completion.
  enum class Kind : uint8_t { kWrite, kRead, kSend, kWireup, kFlush };
  /// kData: RMA/send requests in flight; kFlush: puts in flight and/or the flush awaited;
  /// kVisible: the data is visible at the target, the notify waits for the endpoint's earlier
  /// notifies (UcxEndpoint::pumpNotifies); kNotify: notify AM.
  enum class Phase : uint8_t { kData, kFlush, kVisible, kNotify };

  UcxWorker* worker = nullptr;
  uint64_t generation = 0;          ///< distinguishes reuses of this record (OrphanRef)
  UcxEndpoint* endpoint = nullptr;  ///< null once the user completion was delivered
  Completion* done = nullptr;
  Status status;         ///< first error seen
  uint32_t pending = 0;  ///< UCX requests that have not called back yet
  Kind kind = Kind::kWrite;
  Phase phase = Phase::kData;
  bool has_notify = false;
  bool queued = false;     ///< in the worker's attention queue
  bool user_done = false;  ///< `done` was called (or will be by whoever set this)
  /// A native write that posted its own flush (the endpoint had none in flight and no open
  /// group, UcxEndpoint::postWrite): counted in the endpoint's flushes in flight until advance()
  /// first sees it.
  bool own_flush = false;
  uint32_t notify_value = 0;
  AmHeader header;  ///< AM header of a send or notify: must live until the send completes
  /// What the record waits for besides its own requests: checked RMA replies not received yet,
  /// or (a native write) 1 until its flush group's flush completed.
  uint32_t awaiting = 0;
  // Checked RMA: one put/get request per op, each answered by the target.
  uint64_t first_op = 0;  ///< op ids first_op .. first_op + op_count - 1 (UcxWorker::rma_ops_)
  uint32_t op_count = 0;
  std::vector<RmaHeader> rma_headers;  ///< must live until their sends complete (UCX 1.13 does
                                       ///< not copy AM headers)
  std::vector<OrphanRef> members;      ///< Kind::kFlush: the writes its flush covers, in order

  // The endpoint's list of outstanding records.
  OpRecord* prev = nullptr;
  OpRecord* next = nullptr;
  // The worker's free list.
  OpRecord* next_free = nullptr;

  const char* callName() const {
    switch (phase) {
      case Phase::kData:
        if (kind == Kind::kWireup) return "ucp_ep_flush_nbx(wireup)";
        return kind == Kind::kRead ? "ucp_get_nbx"
                                   : (kind == Kind::kSend ? "ucp_am_send_nbx" : "ucp_put_nbx");
      case Phase::kFlush:
        return kind == Kind::kFlush ? "ucp_ep_flush_nbx" : "ucp_put_nbx/ucp_ep_flush_nbx";
      case Phase::kVisible: return "ucp_ep_flush_nbx";
      case Phase::kNotify: return "ucp_am_send_nbx(notify)";
    }
    return "ucx";
  }
};

}  // namespace zcx::transport::ucx
