// Standard base64 (RFC 4648, padded), as etcd's JSON gateway carries keys and values.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace zcx::detail {

std::string base64Encode(std::string_view bytes);
/// Strict: only the standard alphabet, correct padding, no whitespace; nullopt otherwise.
std::optional<std::string> base64Decode(std::string_view text);

}  // namespace zcx::detail
