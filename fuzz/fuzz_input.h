// What every fuzz target shares: files for parsers that take a path, and the rule that bad input
// must end in an llt::Error (InputError and friends), never in another exception.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace llt::fuzz {

// A folder of this process's own under $TMPDIR (default /tmp), created on first use and removed
// at exit.
const std::filesystem::path& scratch_dir();

// A fresh empty folder scratch_dir()/name (emptied if it exists).
std::filesystem::path fresh_dir(const std::string& name);

// Writes `bytes` to `path`, replacing it; returns `path`.
std::filesystem::path write_file(const std::filesystem::path& path, std::string_view bytes);

// The input split at every kPartSeparator: targets that need several files (a folder) take
// part 0, part 1, ...; missing parts are empty.
inline constexpr std::string_view kPartSeparator = "\n--llt-fuzz-part--\n";
std::vector<std::string_view> split_parts(std::string_view input, size_t parts);

// Runs `body`. llt::Error is what bad input should give; any other exception escaping the parser
// is a finding: its type and message are printed and the process aborts (libFuzzer saves the
// input as a crash).
void expect_llt_errors(const std::function<void()>& body);

}  // namespace llt::fuzz
