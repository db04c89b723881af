// Where an engine's auth secret comes from: EngineOptions::auth_secret or the file named by
// auth_secret_file, read once at engine creation.
#pragma once

#include "auth.h"
#include "zcx/options.h"
#include "zcx/status.h"

namespace zcx::detail {

/// The secret the options configure (empty: authentication is off). kInvalidArgument says what is
/// wrong: both options set, a file that cannot be read, an empty secret. Logs a warning (without
/// the secret) for a file the group or others can read, and for a secret shorter than 16 bytes.
Result<SecretBytes> loadAuthSecret(const EngineOptions& options);
/// Wipes and clears options.auth_secret (the engine keeps its secret in a SecretBytes only).
void forgetAuthSecret(EngineOptions& options);

}  // namespace zcx::detail
