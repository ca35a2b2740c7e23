// Small file helpers: whole-file reads and atomic writes (temp file + rename, so a reader never
// sees a half-written file and an interrupted run leaves nothing that looks complete).
#pragma once

#include <filesystem>
#include <string>

namespace llt {

// The file's bytes. Throws InputError naming the file if it cannot be read.
std::string read_file(const std::filesystem::path& path);

// Writes `content` to `path` (created or truncated) and closes it. Throws InputError if `path`
// cannot be opened (permissions, no such folder), RuntimeError naming the file and the system's
// reason ("No space left on device") on a full disk or if writing or closing fails; the partial
// file is removed then.
void write_file(const std::filesystem::path& path, const std::string& content);

// Writes `content` to `path` + ".tmp" (write_file), then renames onto `path`. Throws InputError if
// `path` exists and !overwrite (nothing a user has is replaced silently) or the temp file cannot be
// opened, RuntimeError on a write failure (the temp file is removed).
void write_file_atomic(const std::filesystem::path& path, const std::string& content,
                       bool overwrite);

// Throws InputError naming `flag` if `path` exists and !overwrite.
void refuse_existing(const std::filesystem::path& path, bool overwrite, const std::string& flag);

}  // namespace llt
