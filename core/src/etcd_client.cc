#include "etcd_client.h"

#include <glog/logging.h>

#include <map>
#include <mutex>

#include "base64.h"

namespace zcx::detail {
namespace {

constexpr size_t kMaxMembers = 16;

// gRPC codes etcd answers with, in the gateway's {"error","message","code"} body.
constexpr int64_t kGrpcDeadlineExceeded = 4;
constexpr int64_t kGrpcNotFound = 5;
constexpr int64_t kGrpcResourceExhausted = 8;
constexpr int64_t kGrpcOutOfRange = 11;
constexpr int64_t kGrpcUnavailable = 14;

StatusCode codeOfGrpc(int64_t code) {
  switch (code) {
    case 3:
    case 9: return StatusCode::kInvalidArgument;
    case kGrpcNotFound: return StatusCode::kNotFound;
    case 7:
    case 16: return StatusCode::kPermissionDenied;
    case kGrpcResourceExhausted: return StatusCode::kResourceExhausted;
    case kGrpcOutOfRange: return StatusCode::kOutOfRange;
    default: return StatusCode::kInternal;
  }
}

std::string memberName(const HostPort& m) {
  return (m.host.find(':') != std::string::npos ? "[" + m.host + "]" : m.host) + ":" +
         std::to_string(m.port);
}

Result<EtcdKeyValue> parseKv(const Json& j, const std::string& where) {
  auto bad = [&](std::string_view what) {
    return Status(StatusCode::kProtocolError,
                  "etcd member " + where + " sent a malformed key-value: " + std::string(what));
  };
  if (!j.isObject()) return bad("not an object");
  EtcdKeyValue kv;
  const Json* key = j.get("key");
  if (!key || !key->isString()) return bad("no key");
  auto k = base64Decode(key->text());
  if (!k) return bad("key is not base64");
  kv.key = std::move(*k);
  if (const Json* v = j.get("value")) {
    if (!v->isString()) return bad("value is not a string");
    auto d = base64Decode(v->text());
    if (!d) return bad("value is not base64");
    kv.value = std::move(*d);
  }
  if (const Json* l = j.get("lease")) {
    auto id = l->int64();
    if (!id) return bad("bad lease");
    kv.lease = *id;
  }
  if (const Json* r = j.get("mod_revision")) {
    auto rev = r->int64();
    if (!rev) return bad("bad mod_revision");
    kv.mod_revision = *rev;
  }
  return kv;
}

int64_t headerRevision(const Json& reply) {
  const Json* h = reply.get("header");
  const Json* r = h ? h->get("revision") : nullptr;
  auto v = r ? r->int64() : std::nullopt;
  return v.value_or(0);
}

std::string rangeBody(std::string_view key, std::string_view range_end) {
  std::string b = "{\"key\":\"" + base64Encode(key) + "\"";
  if (!range_end.empty()) b += ",\"range_end\":\"" + base64Encode(range_end) + "\"";
  return b;
}

}  // namespace

Result<std::vector<HostPort>> parseEtcdUrl(std::string_view url) {
  constexpr std::string_view kScheme = "etcd://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return Status(StatusCode::kInvalidArgument,
                  "metadata '" + std::string(url) +
                      "' is not an etcd URL; write etcd://HOST:PORT[,HOST:PORT...] (etcd's "
                      "client port, 2379 by default)");
  }
  std::string_view rest = url.substr(kScheme.size());
  std::vector<HostPort> members;
  while (!rest.empty() || members.empty()) {
    size_t comma = rest.find(',');
    std::string_view one = rest.substr(0, comma);
    auto hp = parseHostPort(one);
    if (!hp.ok() || hp->host.empty() || hp->port == 0) {
      return Status(StatusCode::kInvalidArgument, "metadata '" + std::string(url) + "': member '" +
                                                      std::string(one) +
                                                      "' is not HOST:PORT with a port above 0");
    }
    members.push_back(*hp);
    if (members.size() > kMaxMembers) {
      return Status(StatusCode::kInvalidArgument, "metadata '" + std::string(url) +
                                                      "': more than " +
                                                      std::to_string(kMaxMembers) + " members");
    }
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
    if (rest.empty()) {
      return Status(StatusCode::kInvalidArgument,
                    "metadata '" + std::string(url) + "' ends with ','");
    }
  }
  return members;
}

std::string prefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

Result<std::unique_ptr<EtcdClient>> EtcdClient::create(std::string url,
                                                       std::chrono::milliseconds call_timeout,
                                                       int cancel_fd,
                                                       std::shared_ptr<Health> health) {
  auto members = parseEtcdUrl(url);
  if (!members.ok()) return members.status();
  if (call_timeout.count() <= 0)
    return Status(StatusCode::kInvalidArgument, "etcd call timeout must be positive");
  if (!health) {
    // Shared by every client of this URL in the process: a new engine need not find out again
    // that a member hangs.
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<Health>> known;
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = known.begin(); it != known.end();)
      it = it->second.expired() ? known.erase(it) : std::next(it);
    health = known[url].lock();
    if (!health) {
      health = std::make_shared<Health>(members->size());
      known[url] = health;
    }
  }
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(url), std::move(*members),
                                                    call_timeout, cancel_fd, std::move(health)));
}

namespace {
/// A member that failed this recently is tried after the others.
constexpr auto kFailureMemory = std::chrono::seconds(10);
int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}
}  // namespace

std::vector<size_t> EtcdClient::Health::order() const {
  const size_t first = preferred_.load(std::memory_order_relaxed) % members_;
  const int64_t recent =
      nowNs() - std::chrono::duration_cast<std::chrono::nanoseconds>(kFailureMemory).count();
  std::vector<size_t> ok, failed;
  for (size_t i = 0; i < members_; ++i) {
    size_t m = (first + i) % members_;
    int64_t at = failed_at_[m].load(std::memory_order_relaxed);
    (at != 0 && at > recent ? failed : ok).push_back(m);
  }
  ok.insert(ok.end(), failed.begin(), failed.end());
  return ok;
}

void EtcdClient::Health::succeeded(size_t member) {
  preferred_.store(member, std::memory_order_relaxed);
  failed_at_[member].store(0, std::memory_order_relaxed);
}

void EtcdClient::Health::failed(size_t member) {
  failed_at_[member].store(nowNs(), std::memory_order_relaxed);
}

Result<Json> EtcdClient::call(std::string_view path, const std::string& body) {
  const auto deadline = Clock::now() + timeout_;
  const size_t n = members_.size();
  const std::vector<size_t> order = health_->order();
  std::string failures;
  for (size_t i = 0; i < n; ++i) {
    const size_t m = order[i];
    const std::string where = memberName(members_[m]);
    auto now = Clock::now();
    if (now >= deadline) {
      failures += "; " + where + ": not tried (out of time)";
      continue;
    }
    // Each member left gets an equal share of the time left, so one that hangs cannot use it all.
    auto attempt_deadline = now + (deadline - now) / static_cast<int>(n - i);
    Status failed;
    auto x = HttpExchange::post(members_[m], path, body, attempt_deadline, cancel_fd_);
    Result<std::string> reply = x.ok() ? x->readBody(attempt_deadline) : x.status();
    if (!reply.ok()) {
      failed = reply.status();
    } else {
      auto j = parseJson(*reply);
      if (!j.ok() || !j->isObject()) {
        failed = Status(StatusCode::kProtocolError,
                        "etcd member " + where + " answered " + std::string(path) + " with " +
                            (j.ok() ? std::string("a non-object") : j.status().message()));
      } else if (x->statusCode() == 200) {
        health_->succeeded(m);
        return j;
      } else {
        const Json* code = j->get("code");
        const Json* msg = j->get("message");
        int64_t grpc = code ? code->int64().value_or(-1) : -1;
        std::string text = msg && msg->isString() ? msg->text().substr(0, 512) : "?";
        failed =
            Status(StatusCode::kUnavailable, "etcd member " + where + " answered HTTP " +
                                                 std::to_string(x->statusCode()) + ": " + text);
        // An answer from etcd itself: final, unless it says this member cannot serve now.
        if (grpc >= 0 && grpc != kGrpcUnavailable && grpc != kGrpcDeadlineExceeded &&
            x->statusCode() < 500) {
          health_->succeeded(m);
          return Status(codeOfGrpc(grpc), "etcd " + url_ + " " + std::string(path) + ": " + text);
        }
      }
    }
    if (failed.code() == StatusCode::kCancelled) return failed;
    VLOG(1) << "zcx: etcd " << path << " failed on " << where << ": " << failed.message();
    health_->failed(m);
    failures += "; " + failed.message();
  }
  return Status(StatusCode::kUnavailable,
                "no member of " + url_ + " answered " + std::string(path) + " (" +
                    std::to_string(timeout_.count()) + " ms allowed)" + failures +
                    " (check that etcd runs there and has a leader)");
}

Status EtcdClient::put(std::string_view key, std::string_view value, int64_t lease) {
  std::string body =
      "{\"key\":\"" + base64Encode(key) + "\",\"value\":\"" + base64Encode(value) + "\"";
  if (lease != 0) body += ",\"lease\":\"" + std::to_string(lease) + "\"";
  body += "}";
  auto r = call("/v3/kv/put", body);
  return r.status();
}

Result<EtcdClient::RangeResult> EtcdClient::range(std::string_view key, std::string_view range_end,
                                                  int64_t limit) {
  std::string body = rangeBody(key, range_end);
  if (limit > 0) body += ",\"limit\":\"" + std::to_string(limit) + "\"";
  body += "}";
  auto r = call("/v3/kv/range", body);
  if (!r.ok()) return r.status();
  RangeResult out;
  out.revision = headerRevision(*r);
  if (const Json* more = r->get("more")) out.more = more->boolean();
  if (const Json* kvs = r->get("kvs")) {
    if (!kvs->isArray())
      return Status(StatusCode::kProtocolError, "etcd " + url_ + ": range reply kvs not a list");
    for (const Json& j : kvs->items()) {
      auto kv = parseKv(j, url_);
      if (!kv.ok()) return kv.status();
      out.kvs.push_back(std::move(*kv));
    }
  }
  return out;
}

Result<int64_t> EtcdClient::deleteRange(std::string_view key, std::string_view range_end) {
  auto r = call("/v3/kv/deleterange", rangeBody(key, range_end) + "}");
  if (!r.ok()) return r.status();
  const Json* d = r->get("deleted");
  return d ? d->int64().value_or(0) : 0;
}

Result<int64_t> EtcdClient::leaseGrant(int64_t ttl_seconds) {
  auto r = call("/v3/lease/grant", "{\"TTL\":\"" + std::to_string(ttl_seconds) + "\"}");
  if (!r.ok()) return r.status();
  const Json* id = r->get("ID");
  auto v = id ? id->int64() : std::nullopt;
  if (!v || *v == 0) {
    const Json* e = r->get("error");
    return Status(StatusCode::kProtocolError,
                  "etcd " + url_ + " granted no lease" +
                      (e && e->isString() ? ": " + e->text().substr(0, 512) : std::string()));
  }
  return *v;
}

Result<int64_t> EtcdClient::leaseKeepAlive(int64_t id) {
  // A stream in gRPC; through the gateway one request gives one {"result": ...} message.
  auto r = call("/v3/lease/keepalive", "{\"ID\":\"" + std::to_string(id) + "\"}\n");
  if (!r.ok()) return r.status();
  const Json* res = r->get("result");
  if (!res || !res->isObject()) {
    const Json* e = r->get("error");
    const Json* m = e ? e->get("message") : nullptr;
    return Status(StatusCode::kUnavailable,
                  "etcd " + url_ + " lease keepalive failed" +
                      (m && m->isString() ? ": " + m->text().substr(0, 512) : std::string()));
  }
  const Json* ttl = res->get("TTL");
  if (!ttl) return int64_t{0};  // etcd omits a zero TTL: the lease is gone
  auto v = ttl->int64();
  if (!v) return Status(StatusCode::kProtocolError, "etcd " + url_ + ": bad TTL in keepalive");
  return *v;
}

Status EtcdClient::leaseRevoke(int64_t id) {
  auto r = call("/v3/lease/revoke", "{\"ID\":\"" + std::to_string(id) + "\"}");
  if (r.status().code() == StatusCode::kNotFound) return Status::Ok();
  return r.status();
}

Result<std::unique_ptr<EtcdWatch>> EtcdClient::watch(std::string_view key,
                                                     std::string_view range_end,
                                                     int64_t start_revision) {
  std::string body = "{\"create_request\":" + rangeBody(key, range_end);
  if (start_revision > 0) body += ",\"start_revision\":\"" + std::to_string(start_revision) + "\"";
  body += "}}";
  const auto deadline = Clock::now() + timeout_;
  const size_t n = members_.size();
  const std::vector<size_t> order = health_->order();
  std::string failures;
  for (size_t i = 0; i < n; ++i) {
    const size_t m = order[i];
    const std::string where = memberName(members_[m]);
    auto now = Clock::now();
    if (now >= deadline) break;
    auto attempt_deadline = now + (deadline - now) / static_cast<int>(n - i);
    auto x = HttpExchange::post(members_[m], "/v3/watch", body, attempt_deadline, cancel_fd_);
    if (!x.ok()) {
      if (x.status().code() == StatusCode::kCancelled) return x.status();
      health_->failed(m);
      failures += "; " + x.status().message();
      continue;
    }
    if (x->statusCode() != 200) {
      health_->failed(m);
      failures += "; etcd member " + where + " answered HTTP " + std::to_string(x->statusCode());
      continue;
    }
    // A stream whose socket stays open: notice a member that vanishes without closing it.
    (void)setPeerTimeout(x->fd(), std::chrono::seconds(10));
    std::unique_ptr<EtcdWatch> w(new EtcdWatch(std::move(*x), where));
    auto created = w->x_.readMessage(attempt_deadline);
    if (!created.ok() || !*created) {
      health_->failed(m);
      failures += "; " + (created.ok() ? "etcd member " + where + " ended the watch at once"
                                       : created.status().message());
      continue;
    }
    auto j = parseJson(**created);
    const Json* res = j.ok() ? j->get("result") : nullptr;
    if (!res || !res->get("created") || !res->get("created")->boolean()) {
      health_->failed(m);
      failures += "; etcd member " + where +
                  " did not create the watch: " + created->value().substr(0, 256);
      continue;
    }
    if (const Json* c = res->get("canceled"); c && c->boolean()) {
      const Json* why = res->get("cancel_reason");
      return Status(StatusCode::kUnavailable,
                    "etcd " + url_ + " refused the watch: " +
                        (why && why->isString() ? why->text().substr(0, 256) : "?"));
    }
    health_->succeeded(m);
    return w;
  }
  return Status(StatusCode::kUnavailable, "no member of " + url_ + " accepted a watch within " +
                                              std::to_string(timeout_.count()) + " ms" + failures);
}

Result<EtcdWatch::Batch> EtcdWatch::next(Clock::time_point deadline) {
  auto msg = x_.readMessage(deadline);
  if (!msg.ok()) return msg.status();
  if (!*msg) {
    return Status(StatusCode::kConnectionBroken, "etcd member " + member_ + " ended the watch");
  }
  auto j = parseJson(**msg);
  if (!j.ok()) return j.status().withContext("etcd member " + member_ + " watch message");
  const Json* res = j->get("result");
  if (!res || !res->isObject()) {
    const Json* e = j->get("error");
    const Json* m = e ? e->get("message") : nullptr;
    return Status(StatusCode::kUnavailable,
                  "etcd member " + member_ + " broke the watch" +
                      (m && m->isString() ? ": " + m->text().substr(0, 256) : std::string()));
  }
  if (const Json* c = res->get("canceled"); c && c->boolean()) {
    const Json* why = res->get("cancel_reason");
    return Status(StatusCode::kUnavailable,
                  "etcd member " + member_ + " cancelled the watch: " +
                      (why && why->isString() ? why->text().substr(0, 256) : "?"));
  }
  Batch b;
  b.revision = headerRevision(*res);
  if (const Json* events = res->get("events")) {
    if (!events->isArray())
      return Status(StatusCode::kProtocolError, "etcd member " + member_ + ": events not a list");
    for (const Json& e : events->items()) {
      const Json* kv = e.get("kv");
      if (!kv) return Status(StatusCode::kProtocolError, "etcd watch event without kv");
      auto parsed = parseKv(*kv, member_);
      if (!parsed.ok()) return parsed.status();
      EtcdWatchEvent ev;
      if (const Json* t = e.get("type")) {
        if (t->text() == "DELETE")
          ev.deleted = true;
        else if (t->text() != "PUT")
          return Status(StatusCode::kProtocolError, "etcd watch event of unknown type");
      }
      ev.kv = std::move(*parsed);
      b.events.push_back(std::move(ev));
    }
  }
  return b;
}

}  // namespace zcx::detail
