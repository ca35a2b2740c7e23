// Files of named tensors read one tensor at a time: safetensors and torch.save zip archives
// (.pth, pytorch_model.bin). Opening reads only the index (names, dtypes, shapes); a tensor's
// bytes are read when that tensor is asked for, so a loader never holds a second copy of a model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace llt {

// One entry of a tensor file's index.
struct TensorInfo {
  std::string name;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
};

class TensorFile {
 public:
  virtual ~TensorFile() = default;
  virtual const std::filesystem::path& path() const = 0;
  // Every tensor in the file, in the file's order.
  virtual const std::vector<TensorInfo>& tensors() const = 0;
  // The entry for `name`, or nullptr.
  virtual const TensorInfo* find(const std::string& name) const = 0;
  // Reads `name` from disk now: a CPU tensor of its stored dtype and shape. Throws InputError
  // naming the file and the tensor if it is absent or its bytes cannot be read.
  virtual at::Tensor read(const std::string& name) = 0;
};

enum class TensorFileKind { kSafetensors, kTorchZip, kOther };

// What the file's first bytes say it is (not its name). Throws InputError if it cannot be read.
TensorFileKind sniff_tensor_file(const std::filesystem::path& path);

// Opens a safetensors or torch.save file, whatever its name. Throws InputError naming the file
// if it is neither or its index is malformed.
std::unique_ptr<TensorFile> open_tensor_file(const std::filesystem::path& path);

// A read-only file with positioned reads (pread), for readers that fetch byte ranges.
class BinaryFile {
 public:
  // Throws InputError naming the file if it cannot be opened.
  explicit BinaryFile(const std::filesystem::path& path);
  ~BinaryFile();
  BinaryFile(const BinaryFile&) = delete;
  BinaryFile& operator=(const BinaryFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Reads exactly n bytes at offset into dst. Throws InputError naming the file and `what` if
  // the range lies past the end of the file, RuntimeError on an I/O error.
  void read(uint64_t offset, void* dst, uint64_t n, const std::string& what) const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// Human-readable shape "[4096, 11008]" for messages.
std::string shape_string(c10::IntArrayRef shape);

}  // namespace llt
