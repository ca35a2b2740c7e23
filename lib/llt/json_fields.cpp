#include "llt/json_fields.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "llt/errors.h"

namespace llt {
using nlohmann::json;

namespace {

// A JSON value as a short quote for error messages.
std::string quote(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}

}  // namespace

// nlohmann's message for a number beyond double's range, without its "[json.exception...] " tag.
std::string number_overflow(const json::out_of_range& e) {
  const std::string what = e.what();  // "[json.exception.out_of_range.406] number overflow ..."
  const auto bracket = what.find("] ");
  return bracket == std::string::npos ? what : what.substr(bracket + 2);
}

json parse_json(const std::string& text, const std::string& where) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();  // "[json.exception.parse_error.101] parse error at line ..."
    const auto bracket = what.find("] ");
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    std::replace(what.begin(), what.end(), '\n', ' ');
    throw InputError(where + ": not valid JSON (" + what + ")");
  } catch (const json::out_of_range& e) {  // a number beyond double's range: 1e400
    throw InputError(where + ": not valid JSON (" + number_overflow(e) + ")");
  }
}

JsonFields::JsonFields(const json& j, std::string where, std::string prefix)
    : j_(j), where_(std::move(where)), prefix_(std::move(prefix)) {
  if (!j_.is_object()) {
    throw InputError(where_ + (prefix_.empty() ? "" : ": field '" + prefix_ + "'") +
                     ": expected a JSON object, found " + quote(j_));
  }
}

int64_t JsonFields::integer(const std::string& key) const {
  const json& v = get(key);
  if (!json_holds<int64_t>(v)) fail(key, "an integer", v);
  return v.get<int64_t>();
}

double JsonFields::number(const std::string& key, bool null_is_nan) const {
  const json& v = get(key);
  if (null_is_nan && v.is_null()) return std::nan("");
  if (!v.is_number()) fail(key, "a number", v);
  return v.get<double>();
}

std::string JsonFields::string(const std::string& key) const {
  const json& v = get(key);
  if (!v.is_string()) fail(key, "a string", v);
  return v.get<std::string>();
}

JsonFields JsonFields::object(const std::string& key) const {
  return JsonFields(get(key), where_, name(key));
}

std::string JsonFields::name(const std::string& key) const {
  return prefix_.empty() ? key : prefix_ + "." + key;
}

const json& JsonFields::get(const std::string& key) const {
  const auto it = j_.find(key);
  if (it == j_.end()) throw InputError(where_ + ": missing field '" + name(key) + "'");
  return *it;
}

void JsonFields::fail(const std::string& key, const char* expected, const json& v) const {
  throw InputError(where_ + ": field '" + name(key) + "': expected " + expected + ", found " +
                   quote(v));
}

}  // namespace llt
