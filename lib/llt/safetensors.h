// safetensors (huggingface/safetensors): u64 little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// tensors' bytes; offsets are relative to the first byte after the header. Used for HF weights,
// LoRA adapters and merged models.
#pragma once

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "llt/tensor_file.h"

namespace llt {

// Largest header accepted (the reference implementation's limit, 100 MB).
constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

class SafetensorsFile final : public TensorFile {
 public:
  // Reads and checks the header: known dtypes (F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL), byte
  // ranges inside the file and matching their shapes. Throws InputError naming the file and key.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const override { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const TensorInfo* find(const std::string& name) const override;
  at::Tensor read(const std::string& name) override;

  // The header's "__metadata__" (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // [begin, end) file offsets of the tensor's bytes. Throws InputError if absent.
  std::pair<uint64_t, uint64_t> byte_range(const std::string& name) const;

 private:
  BinaryFile file_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;  // per tensors_ entry, absolute offsets
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes a safetensors file one tensor at a time, so a caller holds only the tensor in hand:
// the header (each tensor's name, dtype and shape, in file order) is written first, then each
// tensor's bytes as it comes, into `path` + ".tmp", renamed onto `path` by finish(). Destroyed
// unfinished (an exception on the way), it removes the temp file.
class SafetensorsWriter {
 public:
  // Opens the temp file and writes the header. Throws InputError on a duplicate or reserved
  // name or a dtype safetensors lacks, RuntimeError if the file cannot be written.
  SafetensorsWriter(const std::filesystem::path& path, const std::vector<TensorInfo>& tensors,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends the next tensor's bytes (any device; copied to the CPU). Throws RuntimeError if it
  // is not the next declared tensor (name, dtype, shape) or on an I/O error.
  void write(const std::string& name, const at::Tensor& tensor);
  // Flushes and renames onto `path`. Throws RuntimeError if a declared tensor was not written
  // or on an I/O error.
  void finish();

  // The file's size in bytes: 8 + the padded header + the tensors' bytes.
  uint64_t file_bytes() const { return file_bytes_; }

 private:
  [[noreturn]] void fail(const std::string& what);

  std::filesystem::path path_, tmp_;
  std::vector<TensorInfo> tensors_;
  size_t next_ = 0;
  uint64_t file_bytes_ = 0;
  std::unique_ptr<std::ofstream> out_;
};

// Writes `tensors` in order to `path` with a SafetensorsWriter. Throws as it does.
void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace llt
