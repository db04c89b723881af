// The storage case: a file streamed into a peer's registered memory with no copy in user space,
// then checked at the peer against the checksum the reader computed. Two ways, one after the
// other on the same connection:
//   mmap:      the file is mapped and the mapping registered; one batch of 1 MiB writes goes
//              straight from the page cache into the peer's memory.
//   pipeline:  pread() into a ring of 4 registered 1 MiB buffers (the kernel fills them; no
//              user-space copy), each buffer written to the peer while the next ones are read.
// Before each round the receiver poisons its memory, so a round cannot pass on the previous one's
// bytes; after it, the receiver hashes what arrived and answers with its verdict.
//
//   build/examples/file_to_remote [FILE]                 # both sides on this machine (default
//                                                        #   FILE: a 64 MiB temporary file)
//   build/examples/file_to_remote server 0.0.0.0:18630   # the node that receives
//   ZCX_FILE=/data/shard0 build/examples/file_to_remote client receiver:18630
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "example_common.h"
#include "zcx/zcx.h"

using namespace std::chrono_literals;
using example::Clock;

namespace {

constexpr size_t kChunk = 1 << 20;
constexpr int kDepth = 4;  // pipeline buffers
constexpr uint8_t kPoison = 0xA5;

enum Mode : uint32_t { kMmap = 1, kPipeline = 2, kDone = 3 };
const char* modeName(uint32_t m) { return m == kMmap ? "mmap" : "pipeline"; }

// client -> server: the round starts (mode, size) or ends (checksum); server -> client: verdict.
struct Message {
  uint32_t mode;
  uint32_t ok;  // server's verdict
  uint64_t size;
  uint64_t checksum;
};

// A streaming 64-bit checksum over the bytes in order (FNV-1a over 8-byte words, then mixed), so
// that the reader can compute it chunk by chunk and the receiver over the whole region at once.
class Checksum {
 public:
  void update(const uint8_t* p, size_t n) {
    size_t i = 0;
    if (count_ % 8 == 0) {  // whole words: the same result as the byte loop below, faster
      for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h_ = (h_ ^ w) * 0x100000001b3ULL;
      }
      count_ += i;
    }
    for (; i < n; ++i) {
      word_ |= static_cast<uint64_t>(p[i]) << (8 * (count_++ % 8));
      if (count_ % 8 == 0) {
        h_ = (h_ ^ word_) * 0x100000001b3ULL;
        word_ = 0;
      }
    }
  }
  uint64_t value() const { return example::mix(h_ ^ word_ ^ count_); }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL, word_ = 0, count_ = 0;
};

bool sendMessage(zcx::Connection& conn, zcx::MemoryRegion& mr, const Message& m) {
  std::memcpy(mr.data(), &m, sizeof(m));
  return conn.send(mr, 0, sizeof(m)).wait(30s).ok();
}

bool recvMessage(zcx::Connection& conn, zcx::MemoryRegion& mr, Message* m) {
  zcx::Request r = conn.recv(mr, 0, sizeof(*m));
  if (!r.wait(120s).ok() || r.bytes() != sizeof(*m)) return false;
  std::memcpy(m, mr.data(), sizeof(*m));
  return true;
}

int receiver(const std::string& listen, const std::function<void(std::string)>& ready) {
  zcx::EngineOptions options;
  options.listen_address = listen;
  auto engine = zcx::Engine::create(options);
  if (!engine.ok()) return example::fail("engine", engine.status());
  auto msg_mr = (*engine)->allocate(sizeof(Message), zcx::kLocalOnly);
  if (!msg_mr.ok()) return example::fail("allocate", msg_mr.status());
  ready((*engine)->listenAddress());
  auto conn = (*engine)->accept(60s);
  if (!conn.ok()) return example::fail("accept", conn.status());

  zcx::MemoryRegion dst;
  int rc = 0;
  for (;;) {
    Message m;
    if (!recvMessage(*conn, *msg_mr, &m)) return example::fail("receive", conn->status());
    if (m.mode == kDone) break;
    // A round: memory for the file (registered once, exposed by name), poisoned.
    if (!dst.valid() || dst.size() < m.size) {
      (*engine)->unexpose("file");
      auto r = (*engine)->allocate(m.size, zcx::kRemoteWrite);
      if (!r.ok()) return example::fail("allocate the destination", r.status());
      dst = std::move(*r);
      if (auto s = (*engine)->expose("file", dst); !s.ok()) return example::fail("expose", s);
    }
    std::memset(dst.data(), kPoison, dst.size());
    Message ready_msg{m.mode, 1, m.size, 0};
    if (!sendMessage(*conn, *msg_mr, ready_msg)) return example::fail("send", conn->status());

    // The reader sends the checksum once every write completed (= is visible here).
    Message end;
    if (!recvMessage(*conn, *msg_mr, &end)) return example::fail("receive", conn->status());
    auto t0 = Clock::now();
    Checksum sum;
    sum.update(dst.data(), m.size);
    double hash_s = example::secondsSince(t0);
    bool ok = sum.value() == end.checksum;
    std::printf("receiver: %-8s %.1f MiB, checksum %016" PRIx64 " %s (hashed in %.0f ms)\n",
                modeName(m.mode), m.size / 1048576.0, sum.value(),
                ok ? "== the reader's" : "!= the reader's: WRONG DATA", hash_s * 1e3);
    if (!ok) rc = 1;
    Message verdict{m.mode, ok ? 1u : 0u, m.size, sum.value()};
    if (!sendMessage(*conn, *msg_mr, verdict)) return example::fail("send", conn->status());
  }
  return rc;
}

// One round: announce, wait for the receiver's memory, stream, send the checksum, get the verdict.
int streamFile(zcx::Engine& engine, zcx::Connection& conn, zcx::MemoryRegion& msg_mr, int fd,
               size_t size, Mode mode) {
  Message m{mode, 0, size, 0};
  if (!sendMessage(conn, msg_mr, m) || !recvMessage(conn, msg_mr, &m) || !m.ok)
    return example::fail("start the round", conn.status());
  auto dst = conn.remoteRegion("file");
  if (!dst.ok()) return example::fail("remoteRegion file", dst.status());

  Checksum sum;
  auto t0 = Clock::now();
  if (mode == kMmap) {
    void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return std::perror("mmap"), 1;
    {
      auto src = engine.registerMemory(map, size, zcx::kLocalOnly);
      if (!src.ok()) return munmap(map, size), example::fail("register the mapping", src.status());
      std::vector<zcx::RmaOp> ops;
      for (size_t off = 0; off < size; off += kChunk)
        ops.push_back({&*src, off, &*dst, off, std::min(kChunk, size - off)});
      zcx::Status s = conn.writeBatch(ops).wait(120s);
      if (!s.ok()) return munmap(map, size), example::fail("writeBatch", s);
      sum.update(static_cast<const uint8_t*>(map), size);
    }  // deregistered before the mapping goes
    munmap(map, size);
  } else {
    auto ring = engine.allocate(kDepth * kChunk, zcx::kLocalOnly);
    if (!ring.ok()) return example::fail("allocate the ring", ring.status());
    std::vector<zcx::Request> inflight(kDepth);
    size_t chunk = 0;
    for (size_t off = 0; off < size; off += kChunk, ++chunk) {
      size_t slot = chunk % kDepth, len = std::min(kChunk, size - off);
      if (inflight[slot].valid()) {  // the buffer is free once its write completed
        if (auto s = inflight[slot].wait(120s); !s.ok()) return example::fail("write", s);
      }
      uint8_t* buf = ring->data() + slot * kChunk;
      for (size_t got = 0; got < len;) {
        ssize_t n = pread(fd, buf + got, len - got, static_cast<off_t>(off + got));
        if (n <= 0) return std::perror("pread"), 1;
        got += static_cast<size_t>(n);
      }
      sum.update(buf, len);
      inflight[slot] = conn.write(*ring, slot * kChunk, *dst, off, len);
    }
    for (auto& r : inflight) {
      if (r.valid())
        if (auto s = r.wait(120s); !s.ok()) return example::fail("write", s);
    }
  }
  double secs = example::secondsSince(t0);

  Message end{mode, 0, size, sum.value()};
  if (!sendMessage(conn, msg_mr, end) || !recvMessage(conn, msg_mr, &m))
    return example::fail("checksum exchange", conn.status());
  std::printf("reader:   %-8s %.1f MiB in %.0f ms: %.2f GB/s; the receiver %s\n", modeName(mode),
              size / 1048576.0, secs * 1e3, size / secs / 1e9,
              m.ok ? "verified the checksum" : "found WRONG DATA");
  return m.ok ? 0 : 1;
}

// argv[1] in the two-process mode, or ZCX_FILE; otherwise a temporary file of random bytes.
std::string g_file;

int reader(const std::string& address) {
  std::string path = g_file;
  bool temporary = path.empty();
  if (temporary) {
    const char* tmp = std::getenv("TMPDIR");
    path = std::string(tmp ? tmp : "/tmp") + "/zcx_file_to_remote.XXXXXX";
    int fd = mkstemp(path.data());
    if (fd < 0) return std::perror("mkstemp"), 1;
    std::vector<uint8_t> block(kChunk);
    std::mt19937_64 rng(std::random_device{}());
    // 64 MiB and a ragged tail, so the last chunk is partial.
    for (size_t written = 0, total = 64 * kChunk + 12345; written < total;) {
      for (size_t i = 0; i < block.size(); i += 8) {
        uint64_t w = rng();
        std::memcpy(&block[i], &w, 8);
      }
      size_t n = std::min(block.size(), total - written);
      if (write(fd, block.data(), n) != static_cast<ssize_t>(n)) return std::perror("write"), 1;
      written += n;
    }
    close(fd);
  }
  int fd = open(path.c_str(), O_RDONLY);
  if (temporary) unlink(path.c_str());
  if (fd < 0) return std::perror(path.c_str()), 1;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size == 0)
    return std::fprintf(stderr, "error: %s is empty or unreadable\n", path.c_str()), 1;
  size_t size = static_cast<size_t>(st.st_size);

  auto engine = zcx::Engine::create({});
  if (!engine.ok()) return example::fail("engine", engine.status());
  auto msg_mr = (*engine)->allocate(sizeof(Message), zcx::kLocalOnly);
  if (!msg_mr.ok()) return example::fail("allocate", msg_mr.status());
  auto conn = (*engine)->connect(address);
  if (!conn.ok()) return example::fail("connect", conn.status());
  std::printf("reader:   %s, %zu bytes, over %s\n", temporary ? "a temporary file" : path.c_str(),
              size, std::string((*engine)->transportName()).c_str());
  int rc = streamFile(**engine, *conn, *msg_mr, fd, size, kMmap);
  if (rc == 0) rc = streamFile(**engine, *conn, *msg_mr, fd, size, kPipeline);
  close(fd);
  Message done{kDone, 0, 0, 0};
  if (!sendMessage(*conn, *msg_mr, done)) return example::fail("send", conn->status());
  if (!example::waitForPeerClose(*conn, 30s).ok()) return example::fail("close", conn->status());
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* f = std::getenv("ZCX_FILE")) g_file = f;
  if (argc == 2) {  // file_to_remote FILE: both sides here
    g_file = argv[1];
    argc = 1;
  }
  return example::run(argc, argv, receiver, reader);
}
