#include "llt/tensor_file.h"

#include <cerrno>
#include <cstring>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "llt/errors.h"
#include "llt/pth.h"
#include "llt/safetensors.h"

namespace llt {

TensorFileKind sniff_tensor_file(const std::filesystem::path& path) {
  BinaryFile file(path);
  unsigned char head[9] = {};
  if (file.size() < sizeof(head)) return TensorFileKind::kOther;
  file.read(0, head, sizeof(head), "the first bytes");
  if (std::memcmp(head, "PK\x03\x04", 4) == 0) return TensorFileKind::kTorchZip;
  // safetensors: u64 little-endian header length, then the JSON header's '{'.
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | head[i];
  if (head[8] == '{' && header_length <= kMaxSafetensorsHeader) return TensorFileKind::kSafetensors;
  return TensorFileKind::kOther;
}

std::unique_ptr<TensorFile> open_tensor_file(const std::filesystem::path& path) {
  switch (sniff_tensor_file(path)) {
    case TensorFileKind::kSafetensors:
      return std::make_unique<SafetensorsFile>(path);
    case TensorFileKind::kTorchZip:
      return std::make_unique<PthFile>(path);
    case TensorFileKind::kOther:
      break;
  }
  throw InputError(path.string() +
                   ": neither a safetensors file nor a torch.save zip archive (by content)");
}

BinaryFile::BinaryFile(const std::filesystem::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw InputError(path.string() + ": cannot open for reading: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw InputError(path.string() + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

BinaryFile::~BinaryFile() {
  if (fd_ >= 0) ::close(fd_);
}

void BinaryFile::read(uint64_t offset, void* dst, uint64_t n, const std::string& what) const {
  if (offset > size_ || n > size_ - offset) {
    throw InputError(path_.string() + ": " + what + " at bytes [" + std::to_string(offset) + ", " +
                     std::to_string(offset + n) + ") lies past the end of the file (" +
                     std::to_string(size_) + " bytes); truncated?");
  }
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      throw RuntimeError(path_.string() + ": read of " + what +
                         " failed: " + (got < 0 ? std::strerror(errno) : "unexpected end of file"));
    }
    out += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<uint64_t>(got);
  }
}

std::string shape_string(c10::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

}  // namespace llt
