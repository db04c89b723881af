// The control channel of zcx_perf (connection 0): one message at a time each way.
#include "perf_control.h"

#include <cstdio>
#include <cstring>
#include <string>

#include "perf_engine.h"

namespace zcx::perf {

Status CtlChannel::init(Engine& eng, Connection c) {
  conn_ = std::move(c);
  auto r = eng.allocate(2 * sizeof(Ctl), kLocalOnly);
  if (!r.ok()) return r.status();
  region_ = std::move(r.value());
  return Status::Ok();
}

Status CtlChannel::send(Ctl m) {
  m.magic = kMagic;
  std::memcpy(region_.data() + sizeof(Ctl), &m, sizeof m);
  Request r = conn_.send(region_, sizeof(Ctl), sizeof(Ctl));
  return r.wait(kCtlTimeout).withContext("control send");
}

Status CtlChannel::sendError(const Status& s) {
  Ctl m;
  m.type = kError;
  std::snprintf(m.text, sizeof m.text, "%s", s.toString().c_str());
  return send(m);
}

bool CtlChannel::ready() {
  if (!pending_.valid()) pending_ = conn_.recv(region_, 0, sizeof(Ctl));
  return pending_.done();
}

Result<Ctl> CtlChannel::recv(std::chrono::milliseconds timeout) {
  ready();
  Status s = pending_.wait(timeout);
  if (!s.ok()) {
    if (s.code() != StatusCode::kStillInFlight) pending_ = Request();
    return s.withContext("control receive");
  }
  size_t n = pending_.bytes();
  pending_ = Request();
  if (n != sizeof(Ctl))
    return err(StatusCode::kProtocolError, "control message of unexpected size");
  Ctl m;
  std::memcpy(&m, region_.data(), sizeof m);
  if (m.magic != kMagic) return err(StatusCode::kProtocolError, "control message with a bad magic");
  if (m.type == kError) {
    m.text[sizeof m.text - 1] = 0;
    return err(StatusCode::kInternal, std::string("peer reported: ") + m.text);
  }
  return m;
}

Result<Ctl> CtlChannel::expect(uint32_t type) {
  auto m = recv();
  if (!m.ok()) return m;
  if (m->type != type) {
    return err(StatusCode::kProtocolError, "control message " + std::to_string(m->type) +
                                               " where " + std::to_string(type) + " was expected");
  }
  return m;
}

}  // namespace zcx::perf
