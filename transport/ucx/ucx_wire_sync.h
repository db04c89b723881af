// Tells ThreadSanitizer that a message's receipt happens after everything its sender did first.
//
// Two engines in one process (several tests) are ordered by the wire: a target writes a put into
// its memory and then sends the reply; the initiator completes the operation once the reply came
// in, and only then does its caller look at the target's memory. TSan sees that edge only for
// some sockets (accepted ones, not the ones UCX connects without blocking) and never through
// shared memory, so it reported such a caller's read as racing the target's write (CI, TSan,
// AuthTest.SameSecretConnectsAndMovesBytes). Every active message we send releases one token and
// every handler acquires it first: coarse, as TSan's own model of accepted sockets is, and
// nothing at all outside TSan builds.
#pragma once

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace zcx::transport::ucx {

#if defined(__SANITIZE_THREAD__)
inline char wire_sync_token;
inline void wireRelease() { __tsan_release(&wire_sync_token); }
inline void wireAcquire() { __tsan_acquire(&wire_sync_token); }
#else
inline void wireRelease() {}
inline void wireAcquire() {}
#endif

}  // namespace zcx::transport::ucx
