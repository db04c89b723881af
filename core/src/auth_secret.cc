#include "auth_secret.h"

#include <errno.h>
#include <fcntl.h>
#include <glog/logging.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace zcx::detail {
namespace {

constexpr size_t kMinSecretLength = 16;
constexpr size_t kMaxSecretFile = 64 * 1024;

Status fileError(const std::string& path, const std::string& what) {
  return Status(StatusCode::kInvalidArgument,
                "auth_secret_file '" + path + "': " + what +
                    "; point it at a readable file that holds the shared secret (the same on "
                    "every peer), e.g. made with `openssl rand -hex 32 > FILE; chmod 600 FILE`");
}

Result<SecretBytes> readSecretFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fileError(path, std::string("cannot open it: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fileError(path, "not a regular file");
  }
  if (st.st_mode & (S_IRGRP | S_IROTH)) {
    LOG(WARNING) << "zcx: auth_secret_file '" << path
                 << "' is readable by its group or by others (mode " << std::oct
                 << (st.st_mode & 0777) << std::dec
                 << "); anyone who can read it can connect: chmod 600 it";
  }
  std::vector<uint8_t> bytes(kMaxSecretFile + 1);
  size_t have = 0;
  while (have < bytes.size()) {
    ssize_t n = ::read(fd, bytes.data() + have, bytes.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      OPENSSL_cleanse(bytes.data(), bytes.size());
      ::close(fd);
      return fileError(path, std::string("cannot read it: ") + std::strerror(err));
    }
    if (n == 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(fd);
  if (have > kMaxSecretFile) {
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return fileError(path, "larger than 64 KiB, which no secret needs; is it the right file?");
  }
  // One trailing newline (and a CR before it) is an editor's or `echo`'s, not the secret's.
  if (have > 0 && bytes[have - 1] == '\n') --have;
  if (have > 0 && bytes[have - 1] == '\r') --have;
  SecretBytes secret(std::span<const uint8_t>(bytes.data(), have));
  OPENSSL_cleanse(bytes.data(), bytes.size());
  if (secret.empty()) return fileError(path, "it is empty");
  return secret;
}

}  // namespace

Result<SecretBytes> loadAuthSecret(const EngineOptions& options) {
  if (!options.auth_secret.empty() && !options.auth_secret_file.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "both auth_secret and auth_secret_file are set; set only one of them");
  }
  SecretBytes secret;
  if (!options.auth_secret_file.empty()) {
    auto s = readSecretFile(options.auth_secret_file);
    if (!s.ok()) return s.status();
    secret = std::move(*s);
  } else if (!options.auth_secret.empty()) {
    secret = SecretBytes(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(options.auth_secret.data()), options.auth_secret.size()));
  }
  if (!secret.empty() && secret.size() < kMinSecretLength) {
    LOG(WARNING) << "zcx: the auth secret is only " << secret.size() << " bytes; use at least "
                 << kMinSecretLength << " random bytes (e.g. `openssl rand -hex 32`)";
  }
  return secret;
}

void forgetAuthSecret(EngineOptions& options) {
  if (options.auth_secret.empty()) return;
  OPENSSL_cleanse(options.auth_secret.data(), options.auth_secret.size());
  options.auth_secret.clear();
}

}  // namespace zcx::detail
