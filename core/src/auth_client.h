// The active (client) side of the authentication handshake (auth.h), blocking with a deadline.
#pragma once

#include "auth.h"
#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

/// Runs AUTH_INIT -> AUTH_CHALLENGE -> AUTH_PROOF on a freshly connected control socket and
/// returns the MACs of the authenticated channel. kPermissionDenied ("authentication failed:
/// ...") when the server does not know the secret or does not authenticate; the server's proof
/// is checked before anything but a nonce is sent.
Result<ChannelMacs> authenticateAsClient(int fd, const SecretBytes& secret,
                                         Clock::time_point deadline);

}  // namespace zcx::detail
