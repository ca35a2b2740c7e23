// One name table per enum: the spelling of each value as flags, TOML and JSON write it. A type
// joins by declaring `const NameTable<E>& names(E)` next to it (found by argument-dependent
// lookup); name_of, value_of and names_list below then work for it, and nothing else converts.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace llt {

template <typename E>
using NameTable = std::vector<std::pair<std::string, E>>;

// "on" | "off", the spelling of every on/off option (--shuffle, --kv-cache).
inline const NameTable<bool>& on_off_names() {
  static const NameTable<bool> table{{"on", true}, {"off", false}};
  return table;
}

namespace detail {
inline const NameTable<bool>& names(bool) { return on_off_names(); }
template <typename E>
const NameTable<E>& table_of() {
  using llt::detail::names;
  return names(E{});
}
}  // namespace detail

// The name of `value` in its table.
template <typename E>
const std::string& name_of(E value) {
  for (const auto& [name, v] : detail::table_of<E>()) {
    if (v == value) return name;
  }
  throw std::logic_error("llt: a value missing from its name table");
}

// The value named `name`, or std::nullopt when the table has no such name.
template <typename E>
std::optional<E> value_of(const std::string& name) {
  for (const auto& [n, v] : detail::table_of<E>()) {
    if (n == name) return v;
  }
  return std::nullopt;
}

// Every name, in table order ("none, block, every-k or ffn" in messages; the flag's choices).
template <typename E>
std::vector<std::string> names_list() {
  std::vector<std::string> out;
  for (const auto& [n, v] : detail::table_of<E>()) out.push_back(n);
  return out;
}

}  // namespace llt
