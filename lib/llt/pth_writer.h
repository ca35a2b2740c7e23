// Writing torch.save zip archives (Meta's consolidated.NN.pth) of a flat {name: tensor} state dict,
// one tensor at a time: data.pkl, the pickle torch.save writes for an OrderedDict of tensors (each
// a reference to a storage record), goes first, then each tensor's bytes as record data/<i>. What
// torch.load (weights_only too) and llt's PthFile read. The reader is lib/llt/pth.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "llt/tensor_file.h"

namespace caffe2 {
namespace serialize {
class PyTorchStreamWriter;
}  // namespace serialize
}  // namespace caffe2

namespace llt {

// The pickle (protocol 2) of an OrderedDict {name: tensor} as torch.save writes it, tensor i
// being contiguous, at offset 0 of its own storage "i" (torch.<Dtype>Storage, on "cpu").
// Throws InputError on a dtype torch.save has no storage class for.
std::string torch_state_dict_pickle(const std::vector<TensorInfo>& tensors);

class PthWriter {
 public:
  // Opens `path` + ".tmp" and writes data.pkl for `tensors` (in order). Throws InputError as
  // torch_state_dict_pickle, RuntimeError if the file cannot be written.
  PthWriter(const std::filesystem::path& path, const std::vector<TensorInfo>& tensors);
  ~PthWriter();  // unfinished: removes the temp file
  PthWriter(const PthWriter&) = delete;
  PthWriter& operator=(const PthWriter&) = delete;

  // Writes the next declared tensor's bytes (any device; copied to the CPU). Throws
  // RuntimeError if it is not the next one (name, dtype, shape) or on an I/O error.
  void write(const std::string& name, const at::Tensor& tensor);
  // Writes the zip's end and renames onto `path`. Throws RuntimeError if a tensor is missing or
  // on an I/O error.
  void finish();

 private:
  [[noreturn]] void fail(const std::string& what);

  // The zip writer writes through write_bytes() into out_, which never reports a failure to it
  // (its destructor would end the archive and throw, terminating): write errors are kept in
  // io_error_ and checked after each record.
  size_t write_bytes(const void* data, size_t size);

  std::filesystem::path path_, tmp_;
  std::vector<TensorInfo> tensors_;
  size_t next_ = 0;
  std::unique_ptr<std::ofstream> out_;  // destroyed after zip_
  bool io_error_ = false;
  std::unique_ptr<caffe2::serialize::PyTorchStreamWriter> zip_;
};

}  // namespace llt
