// Reading JSON written by llt or a user with errors that name the file (and line) and the field:
// parse_json and JsonFields, typed access to one object's fields.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace llt {

// Parses `text`; throws InputError "<where>: not valid JSON (...)".
nlohmann::json parse_json(const std::string& text, const std::string& where);

// Typed access to one JSON object's fields; `prefix` names nested objects in messages. Throws
// InputError "<where>: missing field 'a.b'" or "<where>: field 'a.b': expected an integer, found
// ...". Holds a reference: `j` must outlive it.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& j, std::string where, std::string prefix = "");
  bool has(const std::string& key) const { return j_.contains(key); }
  int64_t integer(const std::string& key) const;
  // `null_is_nan`: null reads as NaN (JSON has no NaN; nlohmann writes it as null).
  double number(const std::string& key, bool null_is_nan = false) const;
  std::string string(const std::string& key) const;
  JsonFields object(const std::string& key) const;
  const std::string& where() const { return where_; }

 private:
  std::string name(const std::string& key) const;
  const nlohmann::json& get(const std::string& key) const;
  [[noreturn]] void fail(const std::string& key, const char* expected,
                         const nlohmann::json& v) const;
  const nlohmann::json& j_;
  std::string where_;
  std::string prefix_;
};

}  // namespace llt
