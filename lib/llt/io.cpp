#include "llt/io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "llt/errors.h"

namespace llt {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw InputError(path.string() + ": read failed");
  return buffer.str();
}

void refuse_existing(const std::filesystem::path& path, bool overwrite, const std::string& flag) {
  if (!overwrite && std::filesystem::exists(path)) {
    throw InputError(path.string() + ": already exists (" + flag +
                     "); pass --overwrite to replace it");
  }
}

void write_file(const std::filesystem::path& path, const std::string& content) {
  // stdio rather than ofstream: every step reports errno (EFBIG, ENOSPC), fclose included.
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) {
    const int reason = errno;
    const std::string what = path.string() + ": cannot open for writing: " + std::strerror(reason);
    // A full disk or quota is the machine's state, not the user's input.
    if (reason == ENOSPC || reason == EDQUOT || reason == EIO) throw RuntimeError(what);
    throw InputError(what);
  }
  const bool written = std::fwrite(content.data(), 1, content.size(), out) == content.size() &&
                       std::fflush(out) == 0;
  const int write_errno = errno;
  const bool closed = std::fclose(out) == 0;
  if (!written || !closed) {
    const int reason = written ? errno : write_errno;
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
    throw RuntimeError(path.string() + ": write failed: " + std::strerror(reason));
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& content,
                       bool overwrite) {
  refuse_existing(path, overwrite, "output");
  const std::filesystem::path tmp = path.string() + ".tmp";
  write_file(tmp, content);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw RuntimeError(path.string() + ": cannot rename the finished temp file into place");
  }
}

}  // namespace llt
