#include "llt/io.h"

#include <cstdio>
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

void write_file_atomic(const std::filesystem::path& path, const std::string& content,
                       bool overwrite) {
  refuse_existing(path, overwrite, "output");
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw InputError(tmp.string() + ": cannot open for writing");
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw RuntimeError(tmp.string() + ": write failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw RuntimeError(path.string() + ": cannot rename the finished temp file into place");
  }
}

}  // namespace llt
