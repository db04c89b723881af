#include "metadata_store.h"

#include <glog/logging.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

namespace zcx::detail {
namespace {

constexpr size_t kMaxCachedNames = 100000;
constexpr int64_t kRangeLimit = 10000;
/// A watch silent this long is re-established (from the revision it reached): a member cut
/// off from the cluster keeps the stream open but delivers nothing.
constexpr auto kWatchSilence = std::chrono::seconds(30);
constexpr auto kRetryPause = std::chrono::milliseconds(500);
constexpr std::string_view kAddressSuffix = "/address";

bool nameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

/// A published address must be HOST:PORT with a host and a port above 0.
Status checkAddress(const std::string& key, const std::string& value) {
  auto hp = parseHostPort(value);
  if (value.size() > 300 || !hp.ok() || hp->host.empty() || hp->port == 0) {
    return Status(StatusCode::kProtocolError,
                  "etcd key '" + key + "' holds '" + value.substr(0, 64) +
                      "', not HOST:PORT; something other than a zcx engine wrote it");
  }
  return Status::Ok();
}

}  // namespace

Status validateMetadataConfig(const MetadataConfig& c) {
  auto members = parseEtcdUrl(c.url);
  if (!members.ok()) return members.status();
  if (c.prefix.size() < 2 || c.prefix.size() > 128 || c.prefix.front() != '/' ||
      c.prefix.back() != '/' || c.prefix.find('\0') != std::string::npos) {
    return Status(StatusCode::kInvalidArgument,
                  "metadata_prefix '" + c.prefix +
                      "' must start and end with '/' and be at most 128 bytes (default /zcx/)");
  }
  if (c.lease_ttl < std::chrono::seconds(2) || c.lease_ttl > std::chrono::seconds(10)) {
    return Status(StatusCode::kInvalidArgument,
                  "metadata_lease_ttl must be 2-10 s: a dead engine's keys last that long "
                  "(etcd grants no less than about 2 s)");
  }
  if (c.call_timeout.count() <= 0)
    return Status(StatusCode::kInvalidArgument, "etcd call timeout must be positive");
  return Status::Ok();
}

Status validateEngineName(std::string_view name) {
  if (name.empty() || name.size() > 128 || !std::all_of(name.begin(), name.end(), nameChar)) {
    return Status(StatusCode::kInvalidArgument,
                  "engine name '" + std::string(name.substr(0, 128)) +
                      "' cannot be published in etcd: use 1-128 characters of A-Z a-z 0-9 . _ - "
                      "(set EngineOptions::name; zcx_perf --name)");
  }
  return Status::Ok();
}

Result<std::unique_ptr<MetadataStore>> MetadataStore::open(MetadataConfig config) {
  ZCX_RETURN_IF_ERROR(validateMetadataConfig(config));
  std::unique_ptr<MetadataStore> s(new MetadataStore(std::move(config)));
  s->stop_fd_ = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!s->stop_fd_.valid())
    return Status(StatusCode::kResourceExhausted, "eventfd failed; too many open files?");
  auto c = EtcdClient::create(s->config_.url, s->config_.call_timeout, s->stop_fd_.get());
  if (!c.ok()) return c.status();
  s->client_ = std::move(*c);
  auto d = EtcdClient::create(s->config_.url, s->config_.call_timeout, -1, s->client_->health());
  if (!d.ok()) return d.status();
  s->direct_ = std::move(*d);
  s->watcher_ = std::thread([p = s.get()] { p->watchLoop(); });
  return s;
}

MetadataStore::~MetadataStore() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  uint64_t one = 1;
  (void)!::write(stop_fd_.get(), &one, sizeof(one));
  if (keeper_.joinable()) keeper_.join();
  if (watcher_.joinable()) watcher_.join();
  for (Op& op : ops_) {
    if (op.done) op.done->set_value(Status(StatusCode::kCancelled, "engine shut down"));
  }
  if (lease_ != 0) {
    Status s = direct_->leaseRevoke(lease_);
    if (!s.ok()) {
      LOG(WARNING) << "zcx: could not revoke lease " << lease_ << " in " << config_.url << ": "
                   << s.message() << "; the keys of '" << name_ << "' go when it expires (within "
                   << config_.lease_ttl.count() << " s)";
    } else {
      VLOG(1) << "zcx: revoked lease " << lease_ << " of '" << name_ << "' in " << config_.url;
    }
  }
}

std::string MetadataStore::addressKey(std::string_view name) const {
  return config_.prefix + std::string(name) + std::string(kAddressSuffix);
}

std::string MetadataStore::regionKey(std::string_view name, std::string_view region) const {
  return config_.prefix + std::string(name) + "/regions/" + std::string(region);
}

int64_t MetadataStore::lease() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lease_;
}

bool MetadataStore::watching() const {
  std::lock_guard<std::mutex> lock(mu_);
  return watching_;
}

bool MetadataStore::pause(std::chrono::milliseconds d) {
  pollfd p{stop_fd_.get(), POLLIN, 0};
  ::poll(&p, 1, static_cast<int>(d.count()));
  std::lock_guard<std::mutex> lock(mu_);
  return !stopping_;
}

Status MetadataStore::publish(const std::string& name, const std::string& address) {
  ZCX_RETURN_IF_ERROR(validateEngineName(name));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!name_.empty()) {
      return Status(StatusCode::kInternal, "metadata: '" + name_ + "' is already published");
    }
  }
  auto lease = client_->leaseGrant(config_.lease_ttl.count());
  if (!lease.ok()) return lease.status().withContext("publishing '" + name + "' in etcd");
  // Another live engine under this name would have its address replaced: refuse instead.
  auto existing = client_->range(addressKey(name));
  if (!existing.ok() || !existing->kvs.empty()) {
    (void)client_->leaseRevoke(*lease);
    if (!existing.ok()) return existing.status().withContext("publishing '" + name + "' in etcd");
    return Status(
        StatusCode::kInvalidArgument,
        "an engine named '" + name + "' is already published in " + config_.url + " (key '" +
            addressKey(name) + "' holds " + existing->kvs[0].value.substr(0, 64) +
            "); give this engine another name, or wait up to " +
            std::to_string(config_.lease_ttl.count()) + " s for a dead one's lease to expire");
  }
  Status put = client_->put(addressKey(name), address, *lease);
  if (!put.ok()) {
    (void)client_->leaseRevoke(*lease);
    return put.withContext("publishing '" + name + "' in etcd");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    name_ = name;
    address_ = address;
    lease_ = *lease;
  }
  LOG(INFO) << "zcx: published '" << name << "' at " << address << " in " << config_.url << " (key "
            << addressKey(name) << ", lease " << *lease << ", TTL " << config_.lease_ttl.count()
            << " s)";
  keeper_ = std::thread([this] { keeperLoop(); });
  return Status::Ok();
}

Status MetadataStore::publishRegion(const std::string& region, const std::string& value) {
  auto done = std::make_shared<std::promise<Status>>();
  auto future = done->get_future();
  auto abandoned = std::make_shared<std::atomic<bool>>(false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (name_.empty()) return Status::Ok();  // nothing published: no listener
    if (stopping_) return Status(StatusCode::kCancelled, "engine shut down");
    ops_.push_back(Op{true, region, value, done, abandoned});
  }
  cv_.notify_all();
  // The keeper runs it within its call timeout; a keepalive in progress may come first.
  if (future.wait_for(2 * config_.call_timeout + std::chrono::seconds(1)) !=
      std::future_status::ready) {
    abandoned->store(true);  // the expose fails: the keeper must not publish it later
    return Status(StatusCode::kTimedOut, "publishing region '" + region + "' in " + config_.url +
                                             ": no answer in time; is etcd up?");
  }
  return future.get();
}

void MetadataStore::unpublishRegion(const std::string& region) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (name_.empty() || stopping_) return;
    ops_.push_back(Op{false, region, {}, nullptr, nullptr});
  }
  cv_.notify_all();
}

Status MetadataStore::republish() {
  std::string name, address;
  std::map<std::string, std::string> regions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    name = name_;
    address = address_;
    regions = regions_;
  }
  auto lease = client_->leaseGrant(config_.lease_ttl.count());
  if (!lease.ok()) return lease.status();
  Status s = client_->put(addressKey(name), address, *lease);
  for (auto it = regions.begin(); s.ok() && it != regions.end(); ++it)
    s = client_->put(regionKey(name, it->first), it->second, *lease);
  if (!s.ok()) {
    (void)client_->leaseRevoke(*lease);
    return s;
  }
  std::lock_guard<std::mutex> lock(mu_);
  lease_ = *lease;
  return Status::Ok();
}

void MetadataStore::keeperLoop() {
  const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(config_.lease_ttl) / 3;
  auto next = Clock::now() + period;
  bool lost = false;  // the lease expired: publish again before anything else
  Clock::time_point last_warning{};
  for (;;) {
    std::unique_lock<std::mutex> lock(mu_);
    // While the lease is lost, queued ops wait for it (and must not wake us in a loop).
    cv_.wait_until(lock, next, [&] { return stopping_ || (!lost && !ops_.empty()); });
    if (stopping_) return;
    if (!lost && !ops_.empty()) {
      Op op = std::move(ops_.front());
      ops_.pop_front();
      const std::string key = regionKey(name_, op.region);
      const int64_t lease = lease_;
      lock.unlock();
      Status s;
      auto given_up = [&] { return op.abandoned && op.abandoned->load(); };
      if (op.put && given_up()) {
        s = Status(StatusCode::kCancelled, "the expose gave up waiting");
      } else if (op.put) {
        s = client_->put(key, op.value, lease);
        if (s.ok() && given_up()) {  // it ran after its expose had failed: take it back
          (void)client_->deleteRange(key);
          s = Status(StatusCode::kCancelled, "the expose gave up waiting");
        }
      } else {
        auto d = client_->deleteRange(key);
        s = d.status();
      }
      if (s.ok()) {  // (an abandoned put is never recorded: a new lease would publish it)
        std::lock_guard<std::mutex> relock(mu_);
        if (op.put)
          regions_[op.region] = op.value;
        else
          regions_.erase(op.region);
      } else if (!op.put && s.code() != StatusCode::kCancelled) {
        LOG(WARNING) << "zcx: could not delete " << key << " from " << config_.url << ": "
                     << s.message() << "; it goes when the engine's lease ends";
      }
      if (op.done) op.done->set_value(s.withContext("publishing region '" + op.region + "'"));
      continue;
    }
    const int64_t lease = lease_;
    lock.unlock();
    Status s;
    if (lost) {
      s = republish();
      if (s.ok()) {
        lost = false;
        LOG(WARNING) << "zcx: published '" << name_ << "' again in " << config_.url
                     << " on a new lease";
      }
    } else {
      auto ttl = client_->leaseKeepAlive(lease);
      if (ttl.ok() && *ttl == 0) {
        LOG(WARNING) << "zcx: lease " << lease << " of '" << name_ << "' in " << config_.url
                     << " expired (etcd unreachable for longer than its TTL?): publishing again";
        lost = true;
        next = Clock::now();
        continue;
      }
      s = ttl.status();
    }
    if (s.code() == StatusCode::kCancelled) return;
    if (s.ok()) {
      next = Clock::now() + period;
    } else {
      if (Clock::now() - last_warning > std::chrono::seconds(5)) {
        LOG(WARNING) << "zcx: keeping '" << name_ << "' alive in etcd: " << s.message()
                     << " (retrying)";
        last_warning = Clock::now();
      }
      next = Clock::now() + kRetryPause;
    }
  }
}

void MetadataStore::applyToCache(const EtcdKeyValue& kv, bool deleted) {
  std::string_view key = kv.key;
  if (key.size() <= config_.prefix.size() + kAddressSuffix.size() ||
      key.substr(0, config_.prefix.size()) != config_.prefix ||
      key.substr(key.size() - kAddressSuffix.size()) != kAddressSuffix)
    return;  // a region key, or not ours
  std::string_view name =
      key.substr(config_.prefix.size(), key.size() - config_.prefix.size() - kAddressSuffix.size());
  if (!validateEngineName(name).ok()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (deleted) {
    cache_.erase(std::string(name));
  } else if (checkAddress(kv.key, kv.value).ok() &&
             (cache_.size() < kMaxCachedNames || cache_.count(std::string(name)))) {
    cache_[std::string(name)] = kv.value;
  }
}

void MetadataStore::watchLoop() {
  const std::string end = prefixEnd(config_.prefix);
  int64_t next_revision = 0;  // 0: read the whole range first
  bool warned = false;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    if (next_revision == 0) {
      auto r = client_->range(config_.prefix, end, kRangeLimit);
      if (!r.ok()) {
        if (r.status().code() == StatusCode::kCancelled) return;
        if (!warned)
          LOG(WARNING) << "zcx: reading " << config_.prefix
                       << " from etcd: " << r.status().message() << " (retrying)";
        warned = true;
        if (!pause(kRetryPause)) return;
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        cache_.clear();
      }
      for (const auto& kv : r->kvs) applyToCache(kv, false);
      next_revision = r->revision + 1;
    }
    auto w = client_->watch(config_.prefix, end, next_revision);
    if (!w.ok()) {
      if (w.status().code() == StatusCode::kCancelled) return;
      if (!warned)
        LOG(WARNING) << "zcx: watching " << config_.prefix << " in etcd: " << w.status().message()
                     << " (retrying)";
      warned = true;
      // A refused watch (e.g. its revision was compacted): read the range again.
      if (w.status().code() == StatusCode::kUnavailable &&
          w.status().message().find("refused the watch") != std::string::npos)
        next_revision = 0;
      if (!pause(kRetryPause)) return;
      continue;
    }
    warned = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      watching_ = true;
    }
    VLOG(1) << "zcx: watching " << config_.prefix << " on " << (*w)->member() << " from revision "
            << next_revision;
    Status broke;
    for (;;) {
      auto b = (*w)->next(Clock::now() + kWatchSilence);
      if (!b.ok()) {
        broke = b.status();
        break;
      }
      for (const auto& e : b->events) {
        applyToCache(e.kv, e.deleted);
        next_revision = std::max(next_revision, e.kv.mod_revision + 1);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      watching_ = false;  // until it is back, resolve() asks etcd
    }
    if (broke.code() == StatusCode::kCancelled) return;
    if (broke.code() == StatusCode::kUnavailable) next_revision = 0;  // cancelled by etcd
    if (broke.code() != StatusCode::kTimedOut) {
      LOG(WARNING) << "zcx: etcd watch of " << config_.prefix << ": " << broke.message()
                   << "; watching again";
    }
  }
}

Result<std::string> MetadataStore::resolve(const std::string& name, bool fresh) {
  ZCX_RETURN_IF_ERROR(validateEngineName(name));
  if (!fresh) {
    std::lock_guard<std::mutex> lock(mu_);
    if (watching_) {
      auto it = cache_.find(name);
      if (it != cache_.end()) return it->second;
    }
  }
  const std::string key = addressKey(name);
  auto r = direct_->range(key);
  if (!r.ok()) {
    return r.status().withContext("resolving '" + name + "' (key '" + key + "') in " + config_.url);
  }
  if (r->kvs.empty()) {
    return Status(StatusCode::kNotFound,
                  "no engine named '" + name + "' in etcd " + config_.url + " (key '" + key +
                      "' is absent): is it running with EngineOptions::metadata set to this "
                      "etcd, metadata_prefix '" +
                      config_.prefix +
                      "' and a listen_address? (a dead engine's key goes when its lease ends)");
  }
  ZCX_RETURN_IF_ERROR(checkAddress(key, r->kvs[0].value));
  return r->kvs[0].value;
}

}  // namespace zcx::detail
