// An engine's view of etcd (EngineOptions::metadata): it publishes the engine's address and the
// names of its exposed regions under <prefix><name>/ on a lease that a thread keeps alive, and
// resolves other engines' names, kept current by a watch on the prefix.
//
// Keys (values are plain text):
//   <prefix><name>/address           "host:port" of the engine's listener
//   <prefix><name>/regions/<region>  "size=<bytes> access=<none|r|w|rw>"
// All of an engine's keys hang on its lease: it is revoked when the store is destroyed (the keys
// go at once), and a dead engine's keys expire with the lease (TTL at most 10 s).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "etcd_client.h"
#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

struct MetadataConfig {
  std::string url;               ///< "etcd://host:port[,host:port...]"
  std::string prefix = "/zcx/";  ///< starts and ends with '/'
  std::chrono::seconds lease_ttl{10};
  std::chrono::milliseconds call_timeout{5000};  ///< each etcd call, over all members tried
};

/// Checks a metadata configuration (URL, prefix, TTL) without contacting etcd.
Status validateMetadataConfig(const MetadataConfig& config);
/// Whether `name` can be published: 1-128 bytes of [A-Za-z0-9._-] (no '/', and no ':', so that
/// connect() tells a name from a "host:port").
Status validateEngineName(std::string_view name);

class MetadataStore {
 public:
  /// Starts the watch thread; does not wait for etcd (resolve() asks etcd itself until the
  /// watch is established).
  static Result<std::unique_ptr<MetadataStore>> open(MetadataConfig config);
  /// Stops the threads and revokes the lease (bounded by call_timeout): the keys go at once.
  ~MetadataStore();
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;

  /// Grants the lease, puts <prefix><name>/address = `address` on it and starts the thread that
  /// keeps it alive (and, should the lease ever expire, publishes everything again on a new
  /// one). Once per store.
  Status publish(const std::string& name, const std::string& address);
  /// Puts <prefix><name>/regions/<region> (after publish); waits for etcd's answer.
  Status publishRegion(const std::string& region, const std::string& value);
  /// Deletes it; queued behind earlier publishRegion calls, does not wait.
  void unpublishRegion(const std::string& region);

  /// "host:port" published under `name`: from the watch's cache, or asked from etcd when the
  /// cache does not have it or `fresh` is set. kNotFound names the etcd and the key looked at.
  Result<std::string> resolve(const std::string& name, bool fresh = false);

  const std::string& url() const { return config_.url; }
  std::string addressKey(std::string_view name) const;
  std::string regionKey(std::string_view name, std::string_view region) const;
  /// The lease id (0 before publish); for tests and logs.
  int64_t lease() const;
  /// Whether the watch is established and the cache current.
  bool watching() const;

 private:
  explicit MetadataStore(MetadataConfig config) : config_(std::move(config)) {}
  struct Op {
    bool put = true;
    std::string region;
    std::string value;
    std::shared_ptr<std::promise<Status>> done;  ///< null: nobody waits
    /// Set when the caller gave up waiting (its expose failed): not run, or undone if it ran.
    std::shared_ptr<std::atomic<bool>> abandoned;
  };
  void keeperLoop();
  void watchLoop();
  /// Sleeps up to `d`, returning early (false) when stopping.
  bool pause(std::chrono::milliseconds d);
  /// keeper thread: a new lease, and the address and every region on it.
  Status republish();
  /// Applies one watched key change to the cache (watch thread).
  void applyToCache(const EtcdKeyValue& kv, bool deleted);

  const MetadataConfig config_;
  std::unique_ptr<EtcdClient> client_;  ///< keeper and watch threads: cancelled by stop_fd_
  std::unique_ptr<EtcdClient> direct_;  ///< user threads (resolve) and the final revoke
  Fd stop_fd_;                          ///< eventfd, readable once stopping

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::string name_;     ///< published name ("" before publish)
  std::string address_;  ///< published address
  int64_t lease_ = 0;
  std::deque<Op> ops_;
  std::map<std::string, std::string> regions_;  ///< region -> value, as published (keeper)
  std::map<std::string, std::string> cache_;    ///< name -> address, from the watch
  bool watching_ = false;

  std::thread keeper_;
  std::thread watcher_;
};

}  // namespace zcx::detail
