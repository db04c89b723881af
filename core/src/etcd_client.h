// A client of etcd's v3 API through its JSON gRPC gateway (HTTP/1.1, keys and values base64):
// put, range, delete, leases and watches. Several members: a call that fails on one (cannot
// connect, timed out, "no leader", unavailable) moves on to the next; an answer from etcd
// (e.g. "lease not found") is returned as it is. Every call has a deadline; everything etcd
// sends is parsed strictly and bounded (HttpLimits).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http_client.h"
#include "json.h"
#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

/// "etcd://host:port[,host:port...]" -> the members (at most 16). kInvalidArgument says what is
/// wrong.
Result<std::vector<HostPort>> parseEtcdUrl(std::string_view url);

/// The smallest key greater than every key that starts with `prefix` (etcd's range_end of a
/// prefix); "\0" (all keys) if `prefix` is empty or all 0xff.
std::string prefixEnd(std::string_view prefix);

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t lease = 0;
  int64_t mod_revision = 0;
};

struct EtcdWatchEvent {
  bool deleted = false;
  EtcdKeyValue kv;
};

class EtcdClient;

/// One watch stream (v3 watch) on a key range, read by one thread.
class EtcdWatch {
 public:
  struct Batch {
    std::vector<EtcdWatchEvent> events;
    int64_t revision = 0;  ///< the store's revision when this batch was sent
  };
  /// The next batch of events (possibly none: a progress notification). Waits until one comes,
  /// or fails: kCancelled (the cancel fd became readable), kConnectionBroken (the stream broke),
  /// kUnavailable (etcd cancelled the watch, e.g. its start revision was compacted: read the
  /// range again), kTimedOut (`deadline` passed).
  Result<Batch> next(Clock::time_point deadline);
  const std::string& member() const { return member_; }

 private:
  friend class EtcdClient;
  EtcdWatch(HttpExchange x, std::string member) : x_(std::move(x)), member_(std::move(member)) {}
  HttpExchange x_;
  std::string member_;
};

class EtcdClient {
 public:
  /// What the clients of one URL learnt about its members: which answered last (tried first)
  /// and which failed lately (tried last, so a member that hangs costs its deadline once, not on
  /// every call).
  class Health {
   public:
    explicit Health(size_t members)
        : failed_at_(std::make_unique<std::atomic<int64_t>[]>(members)), members_(members) {}
    /// Members in the order to try them.
    std::vector<size_t> order() const;
    void succeeded(size_t member);
    void failed(size_t member);

   private:
    std::atomic<size_t> preferred_{0};
    std::unique_ptr<std::atomic<int64_t>[]> failed_at_;  ///< steady clock ns; 0: not lately
    const size_t members_;
  };

  /// `url` as in parseEtcdUrl. `call_timeout` bounds each call over all members tried.
  /// `cancel_fd` (-1: none): when readable, every call in flight and later fails kCancelled.
  /// `health`: what to share with other clients (null: that of every client of `url` in this
  /// process).
  static Result<std::unique_ptr<EtcdClient>> create(std::string url,
                                                    std::chrono::milliseconds call_timeout,
                                                    int cancel_fd = -1,
                                                    std::shared_ptr<Health> health = nullptr);
  const std::shared_ptr<Health>& health() const { return health_; }

  const std::string& url() const { return url_; }

  Status put(std::string_view key, std::string_view value, int64_t lease);
  struct RangeResult {
    std::vector<EtcdKeyValue> kvs;
    int64_t revision = 0;
    bool more = false;  ///< there were more than `limit` keys
  };
  /// `range_end` empty: only `key`. `limit` 0: no limit (the reply is still bounded in bytes).
  Result<RangeResult> range(std::string_view key, std::string_view range_end = {},
                            int64_t limit = 0);
  /// How many keys were deleted.
  Result<int64_t> deleteRange(std::string_view key, std::string_view range_end = {});

  /// A new lease of `ttl` seconds; its id.
  Result<int64_t> leaseGrant(int64_t ttl_seconds);
  /// Renews a lease; its remaining TTL in seconds, 0 if etcd no longer has it (expired).
  Result<int64_t> leaseKeepAlive(int64_t id);
  /// Ends a lease: its keys are deleted at once. Ok if etcd did not know it.
  Status leaseRevoke(int64_t id);

  /// Watches [key, range_end) from `start_revision` (0: from now); returns once etcd confirmed
  /// it ("created").
  Result<std::unique_ptr<EtcdWatch>> watch(std::string_view key, std::string_view range_end,
                                           int64_t start_revision);

 private:
  EtcdClient(std::string url, std::vector<HostPort> members, std::chrono::milliseconds timeout,
             int cancel_fd, std::shared_ptr<Health> health)
      : url_(std::move(url)),
        members_(std::move(members)),
        timeout_(timeout),
        cancel_fd_(cancel_fd),
        health_(std::move(health)) {}
  /// POSTs `body` to `path` on the members in turn (the last one that answered first) and
  /// returns the reply's JSON object.
  Result<Json> call(std::string_view path, const std::string& body);

  const std::string url_;
  const std::vector<HostPort> members_;
  const std::chrono::milliseconds timeout_;
  const int cancel_fd_;
  const std::shared_ptr<Health> health_;
};

}  // namespace zcx::detail
