#include "llt/pth_writer.h"

#include <fstream>
#include <system_error>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include "llt/errors.h"

namespace llt {
namespace {

// The pickle opcodes written (CPython Lib/pickle.py), protocol 2 as torch.save uses.
constexpr char kProto = '\x80', kGlobal = 'c', kEmptyTuple = ')', kReduce = 'R', kMark = '(',
               kBinUnicode = 'X', kTuple = 't', kBinPersId = 'Q', kBinInt1 = 'K', kBinInt2 = 'M',
               kBinInt = 'J', kLong1 = '\x8a', kNewFalse = '\x89', kSetItems = 'u', kStop = '.';

// torch.save's storage class of a dtype (the ones llt's reader knows).
const char* storage_class(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat:
      return "FloatStorage";
    case c10::kDouble:
      return "DoubleStorage";
    case c10::kHalf:
      return "HalfStorage";
    case c10::kBFloat16:
      return "BFloat16Storage";
    case c10::kLong:
      return "LongStorage";
    case c10::kInt:
      return "IntStorage";
    default:
      return nullptr;
  }
}

class Pickle {
 public:
  void op(char c) { out_ += c; }
  void global(const std::string& module, const std::string& name) {
    out_ += kGlobal + module + "\n" + name + "\n";
  }
  void text(const std::string& s) {
    op(kBinUnicode);
    little_endian(s.size(), 4);
    out_ += s;
  }
  // As pickle.py's save_long: the shortest of BININT1, BININT2, BININT, LONG1.
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op(kBinInt1);
      little_endian(static_cast<uint64_t>(v), 1);
    } else if (v >= 0 && v < 65536) {
      op(kBinInt2);
      little_endian(static_cast<uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op(kBinInt);
      little_endian(static_cast<uint64_t>(v), 4);
    } else {
      op(kLong1);  // two's complement, little-endian, in 8 bytes (always enough here)
      out_ += '\x08';
      little_endian(static_cast<uint64_t>(v), 8);
    }
  }
  void tuple(const std::vector<int64_t>& values) {
    op(kMark);
    for (int64_t v : values) integer(v);
    op(kTuple);
  }
  void empty_ordered_dict() {
    global("collections", "OrderedDict");
    op(kEmptyTuple);
    op(kReduce);
  }
  std::string str() const { return out_; }

 private:
  void little_endian(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }
  std::string out_;
};

}  // namespace

std::string torch_state_dict_pickle(const std::vector<TensorInfo>& tensors) {
  Pickle p;
  p.op(kProto);
  p.op('\x02');
  p.empty_ordered_dict();
  p.op(kMark);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    const char* storage = storage_class(t.dtype);
    if (storage == nullptr) {
      throw InputError("cannot write tensor '" + t.name + "' of dtype " +
                       std::string(c10::toString(t.dtype)) + " to a .pth");
    }
    std::vector<int64_t> strides(t.shape.size(), 1);  // contiguous, in elements
    for (size_t d = t.shape.size(); d-- > 1;) strides[d - 1] = strides[d] * t.shape[d];
    p.text(t.name);
    // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.op(kMark);
    p.op(kMark);  // the persistent id ('storage', torch.XStorage, key, location, numel)
    p.text("storage");
    p.global("torch", storage);
    p.text(std::to_string(i));
    p.text("cpu");
    p.integer(c10::multiply_integers(t.shape));
    p.op(kTuple);
    p.op(kBinPersId);
    p.integer(0);
    p.tuple(t.shape);
    p.tuple(strides);
    p.op(kNewFalse);
    p.empty_ordered_dict();
    p.op(kTuple);
    p.op(kReduce);
  }
  p.op(kSetItems);
  p.op(kStop);
  return p.str();
}

PthWriter::PthWriter(const std::filesystem::path& path, const std::vector<TensorInfo>& tensors)
    : path_(path), tmp_(path.string() + ".tmp"), tensors_(tensors) {
  const std::string pickle = torch_state_dict_pickle(tensors_);
  out_ = std::make_unique<std::ofstream>(tmp_, std::ios::binary | std::ios::trunc);
  if (!*out_) fail("cannot open for writing");
  zip_ = std::make_unique<caffe2::serialize::PyTorchStreamWriter>(
      [this](const void* data, size_t size) { return write_bytes(data, size); });
  zip_->writeRecord("data.pkl", pickle.data(), pickle.size());
  if (io_error_) fail("write of data.pkl failed (disk full?)");
}

size_t PthWriter::write_bytes(const void* data, size_t size) {
  if (!io_error_) {
    out_->write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    io_error_ = !*out_;
  }
  return size;
}

PthWriter::~PthWriter() {
  if (!zip_) return;  // finished, or failed
  zip_.reset();       // ends the archive into the doomed temp file
  out_.reset();
  std::error_code ignored;
  std::filesystem::remove(tmp_, ignored);
}

void PthWriter::fail(const std::string& what) {
  io_error_ = true;  // nothing more reaches the file
  zip_.reset();
  out_.reset();
  std::error_code ignored;
  std::filesystem::remove(tmp_, ignored);
  throw RuntimeError(tmp_.string() + ": " + what);
}

void PthWriter::write(const std::string& name, const at::Tensor& tensor) {
  if (!zip_) throw RuntimeError(tmp_.string() + ": write after finish() or a failure");
  if (next_ == tensors_.size() || tensors_[next_].name != name ||
      tensors_[next_].dtype != tensor.scalar_type() ||
      tensors_[next_].shape != tensor.sizes().vec()) {
    fail("internal: tensor '" + name + "' is not the next one data.pkl declares");
  }
  const at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
  zip_->writeRecord("data/" + std::to_string(next_), cpu.data_ptr(),
                    cpu.numel() * cpu.element_size());
  if (io_error_) fail("write of tensor '" + name + "' failed (disk full?)");
  ++next_;
}

void PthWriter::finish() {
  if (!zip_) throw RuntimeError(tmp_.string() + ": finish() after finish() or a failure");
  if (next_ != tensors_.size())
    fail("internal: finished before tensor '" + tensors_[next_].name + "'");
  zip_->writeEndOfFile();
  zip_.reset();
  out_->flush();
  if (io_error_ || !*out_) fail("write failed (disk full?)");
  out_->close();
  if (!*out_) fail("close failed (disk full?)");
  out_.reset();
  std::error_code error;
  std::filesystem::rename(tmp_, path_, error);
  if (error) {
    std::filesystem::remove(tmp_, error);
    throw RuntimeError(tmp_.string() + ": cannot rename onto " + path_.string());
  }
}

}  // namespace llt
