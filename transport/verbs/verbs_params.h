// Translation of TransportConfig::params into the verbs transport's options (mirrors
// ucx/ucx_params.h).
#pragma once

#include <cstdint>

#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

/// Tunables ("verbs.sq_depth", "verbs.recv_depth" params).
struct VerbsOptions {
  uint32_t sq_depth = 128;
  uint32_t recv_depth = 0;  ///< 0 = derived from max_message_size
  /// Multi-rail: one-sided operations longer than this are striped over the rails in slices
  /// of this size (verbs_rails.h); shorter ones stay on their connection's rail.
  uint32_t slice_size = 64 * 1024;
  /// Transport retries of an unacknowledged packet before the QP fails with "retry exceeded".
  /// 7 is the IB maximum, but soft-RoCE takes it as "retry forever" (a dead peer is then seen
  /// only by the connection's keepalive); a multi-rail transport uses 6 on rails other than 0,
  /// which have no keepalive of their own, so a dead rail fails and its slices move on.
  uint32_t retry_count = 7;
  /// Local ACK timeout of the QP, as the IB exponent: an unacknowledged packet is resent after
  /// 4.096 us x 2^ack_timeout (perftest's --qp-timeout, default 14; NCCL_IB_TIMEOUT). 0 keeps
  /// rdma_cm's choice (19, 2.1 s, on Debian 12's kernel with rxe: logged at VLOG(1) when a QP
  /// connects). Shorter recovers a lost packet sooner on a lossy network but resends packets
  /// whose ACK is merely late: on soft-RoCE in a TCG guest, 14 gave 23-33 retransmissions per
  /// 64 KiB send_bw run, 16 gave 6-10, rdma_cm's 0-1. With retry_count below 7, a peer that
  /// stopped answering fails the QP after (retry_count + 1) times the timeout or more (devices
  /// may wait longer than the value asks).
  uint32_t ack_timeout = 0;
};

/// Accepts verbs.sq_depth and verbs.recv_depth (decimal numbers in [2, 65536]) and
/// verbs.slice_size (bytes, [4096, 1 GiB]), verbs.retry_count ([0, 7]) and verbs.ack_timeout
/// ([0, 31]); anything else is kInvalidArgument naming the key. The device, port and GID index
/// are TransportConfig fields, not params (chooseDevice, verbs_device.h).
Result<VerbsOptions> parseOptions(const TransportConfig& config);

}  // namespace zcx::transport::verbs
