// LLM prefill -> decode: the KV cache of one request moves from the prefill process to the decode
// process in ONE batch of one-sided writes with a notification.
//
// The prefill side (client) has computed a request's KV cache: 256 blocks of 16-256 KiB at
// non-contiguous places of its memory (as a paged KV cache keeps them). It tells the decode side
// (server) that the request is ready (its id, which here also names the data). Decode owns a
// pool of fixed-size KV blocks, registered and exposed as "kv_pool"; it picks free slots
// (scattered over the pool) and answers with the block table: the slot of each block. Prefill
// writes block i into slot table[i], all in one writeWithNotify; the notification tells decode
// that every byte is there. Decode then checks every byte of every block and that nothing outside
// them was touched, and prints the timeline it saw: request sent -> first byte -> last byte
// (notification).
//
//   build/examples/kv_cache_transfer                       # both sides on this machine
//   build/examples/kv_cache_transfer server 0.0.0.0:18610  # decode node
//   build/examples/kv_cache_transfer client decode:18610   # prefill node
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "example_common.h"
#include "zcx/zcx.h"

using namespace std::chrono_literals;
using example::Clock;

namespace {

constexpr size_t kBlocks = 256;
constexpr size_t kMinBlock = 16 << 10, kMaxBlock = 256 << 10;
constexpr size_t kPoolSlots = 320;  // the decode pool has more slots than one request needs
constexpr size_t kSlotSize = kMaxBlock;
constexpr uint8_t kPoison = 0xA5;
constexpr uint32_t kDoneNote = 0x4B56;  // "KV"

// The block table decode sends: the request (its seed names the data) and a slot per block.
struct BlockTable {
  uint64_t seed;
  uint32_t slot[kBlocks];
};

// Both sides derive block sizes from the request's seed (in a real system: from the model's
// layer and head layout); sizes are multiples of 1 KiB in [16 KiB, 256 KiB].
size_t blockSize(uint64_t seed, size_t block) {
  size_t steps = (kMaxBlock - kMinBlock) / 1024 + 1;
  return kMinBlock + (example::mix(seed * 31 + block) % steps) * 1024;
}
uint64_t blockSeed(uint64_t seed, size_t block) { return example::mix(seed + 1000003 * block); }

int decode(const std::string& listen, const std::function<void(std::string)>& ready) {
  zcx::EngineOptions options;
  options.listen_address = listen;
  auto engine = zcx::Engine::create(options);
  if (!engine.ok()) return example::fail("engine", engine.status());
  auto pool = (*engine)->allocate(kPoolSlots * kSlotSize, zcx::kRemoteWrite);
  if (!pool.ok()) return example::fail("allocate the block pool", pool.status());
  std::memset(pool->data(), kPoison, pool->size());
  if (auto s = (*engine)->expose("kv_pool", *pool); !s.ok()) return example::fail("expose", s);
  ready((*engine)->listenAddress());

  auto conn = (*engine)->accept(60s);
  if (!conn.ok()) return example::fail("accept", conn.status());

  // Free slots, scattered: a random choice of kBlocks out of kPoolSlots.
  std::mt19937_64 rng(std::random_device{}());
  std::vector<uint32_t> slots(kPoolSlots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  auto table_mr = (*engine)->allocate(sizeof(BlockTable), zcx::kLocalOnly);
  if (!table_mr.ok()) return example::fail("allocate", table_mr.status());
  auto* table = reinterpret_cast<BlockTable*>(table_mr->data());
  zcx::Request ready_msg = conn->recv(*table_mr, 0, sizeof(uint64_t));  // "request ready"
  if (auto s = ready_msg.wait(60s); !s.ok()) return example::fail("receive the request", s);
  if (ready_msg.bytes() != sizeof(uint64_t)) return std::fputs("error: bad request\n", stderr), 1;
  std::memcpy(&table->seed, table_mr->data(), sizeof(uint64_t));
  std::copy_n(slots.begin(), kBlocks, table->slot);

  auto t_request = Clock::now();
  if (auto s = conn->send(*table_mr, 0, sizeof(BlockTable)).wait(30s); !s.ok())
    return example::fail("send the block table", s);

  // Time to first byte: the first slot whose first word is no longer poison. Then the
  // notification, which arrives once every byte of the batch is visible here.
  uint64_t poison_word;
  std::memset(&poison_word, kPoison, sizeof(poison_word));
  Clock::time_point t_first{}, t_last{};
  std::optional<uint32_t> note;
  auto give_up = Clock::now() + 60s;
  while (!note && Clock::now() < give_up) {
    if (t_first == Clock::time_point{}) {
      for (size_t i = 0; i < kBlocks; ++i) {
        volatile const uint64_t* head =
            reinterpret_cast<const uint64_t*>(pool->data() + table->slot[i] * kSlotSize);
        if (*head != poison_word) {
          t_first = Clock::now();
          break;
        }
      }
    }
    note = conn->pollNotification();
    if (note) t_last = Clock::now();
    std::this_thread::yield();
  }
  if (!note) return example::fail("wait for the notification", conn->status());
  if (*note != kDoneNote) return std::fprintf(stderr, "error: notification %u\n", *note), 1;
  if (t_first == Clock::time_point{}) t_first = t_last;  // landed between two scans

  // Every byte: each block in its slot, the rest of each slot and the unused slots untouched.
  size_t bytes = 0;
  std::string error;
  std::vector<bool> used(kPoolSlots, false);
  for (size_t i = 0; i < kBlocks && error.empty(); ++i) {
    const uint8_t* slot = pool->data() + table->slot[i] * kSlotSize;
    size_t len = blockSize(table->seed, i);
    used[table->slot[i]] = true;
    bytes += len;
    if (size_t bad = example::checkPattern(slot, len, blockSeed(table->seed, i)); bad != len) {
      error = "block " + std::to_string(i) + " differs at byte " + std::to_string(bad);
    } else if (std::any_of(slot + len, slot + kSlotSize, [](uint8_t b) { return b != kPoison; })) {
      error = "slot " + std::to_string(table->slot[i]) + " was written past its block's end";
    }
  }
  for (size_t s = 0; s < kPoolSlots && error.empty(); ++s) {
    const uint8_t* slot = pool->data() + s * kSlotSize;
    if (!used[s] && std::any_of(slot, slot + kSlotSize, [](uint8_t b) { return b != kPoison; }))
      error = "unused slot " + std::to_string(s) + " was written";
  }
  // Tell prefill the verdict (it keeps the connection until then).
  table_mr->data()[0] = error.empty() ? 1 : 0;
  if (auto s = conn->send(*table_mr, 0, 1).wait(30s); !s.ok())
    return example::fail("send the verdict", s);
  if (!error.empty()) return std::fprintf(stderr, "error: %s\n", error.c_str()), 1;
  if (auto s = example::waitForPeerClose(*conn, 30s); !s.ok())
    return example::fail("wait for prefill to close", s);
  auto us = [&](Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - t_request).count();
  };
  double window = std::chrono::duration<double>(t_last - t_request).count();
  std::printf(
      "decode:  %zu blocks, %.1f MiB in %zu of %zu pool slots, every byte verified\n"
      "decode:  time to first byte %.0f us, to last byte %.0f us after the block table was "
      "sent; %.2f GB/s over that time\n",
      kBlocks, bytes / 1048576.0, kBlocks, kPoolSlots, us(t_first), us(t_last),
      bytes / window / 1e9);
  return 0;
}

int prefill(const std::string& address) {
  auto engine = zcx::Engine::create({});
  if (!engine.ok()) return example::fail("engine", engine.status());

  // The paged KV cache of this process: kBlocks blocks at scattered places in a larger arena
  // (1.5x the blocks' slots, shuffled, each at an odd 64-byte offset in its place).
  constexpr size_t kPlaces = kBlocks * 3 / 2;
  constexpr size_t kPlaceSize = kMaxBlock + 4096;
  auto arena = (*engine)->allocate(kPlaces * kPlaceSize, zcx::kLocalOnly);
  if (!arena.ok()) return example::fail("allocate the KV arena", arena.status());
  std::vector<size_t> places(kPlaces);
  std::iota(places.begin(), places.end(), 0);
  std::shuffle(places.begin(), places.end(), std::mt19937_64(std::random_device{}()));

  // "Prefill": the request's blocks, computed where this process keeps them.
  uint64_t seed = std::random_device{}() * 0x100000001ULL + 1;
  std::vector<size_t> local(kBlocks);
  for (size_t i = 0; i < kBlocks; ++i) {
    local[i] = places[i] * kPlaceSize + 64 * (1 + i % 63);
    example::fillPattern(arena->data() + local[i], blockSize(seed, i), blockSeed(seed, i));
  }

  auto conn = (*engine)->connect(address);
  if (!conn.ok()) return example::fail("connect", conn.status());
  auto pool = conn->remoteRegion("kv_pool");
  if (!pool.ok()) return example::fail("remoteRegion kv_pool", pool.status());
  auto table_mr = (*engine)->allocate(sizeof(BlockTable), zcx::kLocalOnly);
  if (!table_mr.ok()) return example::fail("allocate", table_mr.status());
  zcx::Request got = conn->recv(*table_mr, 0, sizeof(BlockTable));  // posted before asking
  auto msg_mr = (*engine)->allocate(sizeof(seed), zcx::kLocalOnly);
  if (!msg_mr.ok()) return example::fail("allocate", msg_mr.status());
  std::memcpy(msg_mr->data(), &seed, sizeof(seed));
  if (auto s = conn->send(*msg_mr, 0, sizeof(seed)).wait(30s); !s.ok())
    return example::fail("send the request", s);
  if (auto s = got.wait(60s); !s.ok()) return example::fail("receive the block table", s);
  if (got.bytes() != sizeof(BlockTable)) return std::fputs("error: short block table\n", stderr), 1;
  BlockTable table;
  std::memcpy(&table, table_mr->data(), sizeof(table));
  if (table.seed != seed) return std::fputs("error: block table for another request\n", stderr), 1;

  std::vector<zcx::RmaOp> ops(kBlocks);
  size_t bytes = 0;
  for (size_t i = 0; i < kBlocks; ++i) {
    if (table.slot[i] >= kPoolSlots) return std::fputs("error: bad slot in table\n", stderr), 1;
    size_t len = blockSize(seed, i);
    ops[i] = zcx::RmaOp{&*arena, local[i], &*pool, table.slot[i] * kSlotSize, len};
    bytes += len;
  }

  auto t0 = Clock::now();
  zcx::Status s = conn->writeWithNotify(ops, kDoneNote).wait(60s);
  double secs = example::secondsSince(t0);
  if (!s.ok()) return example::fail("writeWithNotify", s);
  // The decode side's verdict after it checked every byte.
  zcx::Request verdict = conn->recv(*table_mr, 0, 1);
  if (auto v = verdict.wait(60s); !v.ok()) return example::fail("receive the verdict", v);
  if (table_mr->data()[0] != 1) return std::fputs("error: decode found wrong bytes\n", stderr), 1;
  std::printf(
      "prefill: 1 batch of %zu writes, %.1f MiB, posted to complete in %.0f us: %.2f GB/s\n",
      kBlocks, bytes / 1048576.0, secs * 1e6, bytes / secs / 1e9);
  std::printf("prefill: decode verified every byte\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return example::run(argc, argv, decode, prefill); }
