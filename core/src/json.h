// A small strict JSON reader for replies from etcd's gRPC gateway (untrusted bytes): bounded
// depth, no trailing bytes, strings checked, numbers kept as text.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "zcx/status.h"

namespace zcx::detail {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Type type() const { return type_; }
  bool isObject() const { return type_ == Type::kObject; }
  bool isArray() const { return type_ == Type::kArray; }
  bool isString() const { return type_ == Type::kString; }
  bool boolean() const { return type_ == Type::kBool && bool_; }
  /// Strings and numbers: their text (a string unescaped).
  const std::string& text() const { return text_; }
  const std::vector<Json>& items() const { return items_; }
  /// Member `key` of an object, or nullptr (also when this is not an object).
  const Json* get(std::string_view key) const;
  /// etcd's int64 fields arrive as strings ("123") or numbers: nullopt if neither, or not an
  /// integer in range.
  std::optional<int64_t> int64() const;

 private:
  friend class JsonParser;
  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string text_;
  std::vector<Json> items_;
  std::map<std::string, Json, std::less<>> members_;
};

/// Parses one JSON value filling all of `text` (whitespace around it allowed). At most
/// `max_depth` nested arrays/objects and `max_values` values in all (memory stays within about
/// 100 bytes per value). kProtocolError says where it went wrong.
Result<Json> parseJson(std::string_view text, int max_depth = 32, size_t max_values = 1u << 17);

/// `s` as a JSON string literal (with quotes).
std::string jsonQuote(std::string_view s);

}  // namespace zcx::detail
