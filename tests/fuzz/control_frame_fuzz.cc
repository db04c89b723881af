// The control channel's byte stream: frame headers (decodeFrameHeader) and, for inputs whose
// announced bodies are small, the real readFrame() over a socketpair fed with the same bytes.
// Complete frames' bodies also go through the decoder of their type.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "auth.h"
#include "control_protocol.h"
#include "fuzz_check.h"

using namespace zcx;
using namespace zcx::detail;

namespace {

// Keeps readFrame's body allocation (up to the HELLO limit, 1 MiB) out of the hot loop: the pure
// header model covers the large lengths.
constexpr size_t kSocketLimit = 64 * 1024;

void decodeBody(const Frame& f) {
  switch (f.type) {
    case FrameType::kHello: (void)decodeHello(f.body); break;
    case FrameType::kReject: (void)decodeReject(f.body); break;
    case FrameType::kLookup: (void)decodeLookup(f.body); break;
    case FrameType::kLookupReply: (void)decodeLookupReply(f.body); break;
    case FrameType::kReady:
    case FrameType::kBye: break;
    case FrameType::kCredit: (void)decodeCredit(f.body); break;
    case FrameType::kAuthInit: (void)decodeAuthInit(f.body); break;
    case FrameType::kAuthChallenge: (void)decodeAuthChallenge(f.body); break;
    case FrameType::kAuthProof: (void)decodeAuthProof(f.body); break;
  }
}

// Feeds `in` to readFrame() and checks it returns exactly `expected`, then the expected error.
void readThroughSocket(std::span<const uint8_t> in, const std::vector<Frame>& expected,
                       StatusCode end) {
  int sv[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  Fd reader(sv[0]);
  Fd writer(sv[1]);
  size_t done = 0;
  while (done < in.size()) {
    ssize_t n = ::send(writer.get(), in.data() + done, in.size() - done, MSG_NOSIGNAL);
    FUZZ_CHECK(n > 0);  // the socket buffer (>= 200 KiB) holds kSocketLimit bytes
    done += static_cast<size_t>(n);
  }
  ::shutdown(writer.get(), SHUT_WR);
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  for (const Frame& want : expected) {
    auto f = readFrame(reader.get(), deadline);
    FUZZ_CHECK(f.ok());
    FUZZ_CHECK(f->type == want.type);
    FUZZ_CHECK(f->body == want.body);
  }
  auto last = readFrame(reader.get(), deadline);
  FUZZ_CHECK(!last.ok());
  FUZZ_CHECK(last.status().code() == end);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  std::vector<Frame> frames;
  size_t pos = 0;
  size_t wanted = 0;  // body bytes the last, incomplete frame announces
  StatusCode end = StatusCode::kConnectionBroken;
  while (in.size() - pos >= kFrameHeaderSize) {
    auto header = in.subspan(pos).first<kFrameHeaderSize>();
    auto h = decodeFrameHeader(header);
    if (!h.ok()) {
      FUZZ_CHECK(h.status().code() == StatusCode::kProtocolError);
      end = StatusCode::kProtocolError;
      break;
    }
    // Never more than the frame type's limit: nothing larger is ever allocated for a peer.
    FUZZ_CHECK(h->body_size <= maxFrameBody(static_cast<uint8_t>(h->type)).value_or(0));
    // One encoding per header: re-encoding the decoded header gives the same bytes.
    auto again = encodeFrameHeader(h->type, h->body_size);
    FUZZ_CHECK(std::equal(again.begin(), again.end(), header.begin(), header.end()));
    const size_t avail = in.size() - pos - kFrameHeaderSize;
    if (h->body_size > avail) {
      wanted = h->body_size;
      break;
    }
    auto body = in.subspan(pos + kFrameHeaderSize, h->body_size);
    frames.push_back(Frame{h->type, std::vector<uint8_t>(body.begin(), body.end())});
    decodeBody(frames.back());
    pos += kFrameHeaderSize + h->body_size;
  }
  if (in.size() <= kSocketLimit && wanted <= kSocketLimit) readThroughSocket(in, frames, end);
  return 0;
}
