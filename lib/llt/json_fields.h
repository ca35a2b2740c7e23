// Reading JSON written by llt or a user with errors that name the file (and line) and the field:
// parse_json and JsonFields, typed access to one object's fields.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace llt {

// Whether `v` holds a T as it is, so that v.get<T>() neither throws nor converts: for an integral
// T an integer JSON number inside T's range (get<T>() truncates a float, and one beyond T's range
// is undefined behaviour), for a floating-point T any number, for std::string a string, for
// std::vector<U> an array whose every element holds a U, for nlohmann::json anything.
template <typename T>
bool json_holds(const nlohmann::json& v);

namespace detail {
template <typename T>
struct IsVector : std::false_type {};
template <typename U>
struct IsVector<std::vector<U>> : std::true_type {};
}  // namespace detail

template <typename T>
bool json_holds(const nlohmann::json& v) {
  if constexpr (std::is_same_v<T, nlohmann::json>) {
    return true;
  } else if constexpr (std::is_same_v<T, bool>) {
    return v.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    if (v.is_number_unsigned()) {
      return v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    }
    if (!v.is_number_integer()) return false;
    const int64_t i = v.get<int64_t>();
    return std::is_signed_v<T> ? i >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                                     i <= static_cast<int64_t>(std::numeric_limits<T>::max())
                               : i >= 0;
  } else if constexpr (std::is_floating_point_v<T>) {
    return v.is_number();
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v.is_string();
  } else {
    static_assert(detail::IsVector<T>::value, "json_holds: a type it does not know");
    if (!v.is_array()) return false;
    for (const auto& item : v) {
      if (!json_holds<typename T::value_type>(item)) return false;
    }
    return true;
  }
}

// Parses `text`; throws InputError "<where>: not valid JSON (...)".
nlohmann::json parse_json(const std::string& text, const std::string& where);

// nlohmann's message for a number beyond double's range ("number overflow parsing '1e400'"),
// which it throws as out_of_range, not parse_error: a parser's catch must take both.
std::string number_overflow(const nlohmann::json::out_of_range& e);

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
