// safetensors (huggingface/safetensors): u64 little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// tensors' bytes; offsets are relative to the first byte after the header. Used for HF weights,
// LoRA adapters and merged models.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
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

// Writes `tensors` (any device; copied to the CPU one at a time) in order to `path` + ".tmp" and
// renames it onto `path`. Throws InputError on a duplicate name or an unsupported dtype,
// RuntimeError on an I/O error (the temp file is removed).
void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace llt
