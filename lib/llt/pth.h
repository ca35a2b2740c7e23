// torch.save zip archives (Meta's consolidated.NN.pth, HF's pytorch_model.bin), read one tensor
// at a time. The archive holds data.pkl (a pickle of the state dict, in which each tensor is a
// reference to a storage record) and one record data/<key> per storage. We parse data.pkl with a
// small pickle reader that knows what torch.save writes for a flat {name: tensor} dict, and read
// a storage record only when its tensor is read. (torch::pickle_load would read the whole file.)
// LibTorch 2.x and torch 1.x write the same format.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "llt/tensor_file.h"

namespace caffe2 {
namespace serialize {
class PyTorchStreamReader;
}  // namespace serialize
}  // namespace caffe2

namespace llt {

// Where one tensor of a torch.save state dict lives.
struct PthTensorRecord {
  std::string name;
  c10::ScalarType dtype;
  std::string storage_key;  // record "data/<storage_key>"
  int64_t storage_numel;    // elements in the storage
  int64_t storage_offset;   // in elements
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;  // in elements
};

// Parses a torch.save data.pkl holding a flat {name: tensor} dict (plain dict or OrderedDict,
// tensors or nn.Parameters). Throws InputError naming `source` on malformed or unsupported
// pickles and on tensors that overrun their storage.
std::vector<PthTensorRecord> parse_torch_pickle(const std::string& pickle,
                                                const std::string& source);

// Checks a zip archive's directory before LibTorch's zip reader (which has fuzz-found bugs of its
// own) sees it: the end of central directory record (zip64 too) and the central directory inside
// the file; every entry stored uncompressed, on disk 0, not encrypted, its local header and data
// inside the file, before the directory and overlapping no other entry; every name non-empty,
// unique, relative, without "..", NUL or control bytes. Throws InputError naming the file.
void check_zip_directory(const std::filesystem::path& path);

class PthFile final : public TensorFile {
 public:
  // Checks the zip directory (check_zip_directory), opens the zip and parses data.pkl; reads no
  // tensor data. Throws InputError naming the file.
  explicit PthFile(const std::filesystem::path& path);
  ~PthFile() override;

  const std::filesystem::path& path() const override { return path_; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const TensorInfo* find(const std::string& name) const override;
  // Reads the tensor's storage record (only that record). Throws InputError naming the file and
  // tensor if the record is missing or too short.
  at::Tensor read(const std::string& name) override;

 private:
  std::filesystem::path path_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
  std::vector<TensorInfo> tensors_;
  std::vector<PthTensorRecord> records_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace llt
