#include "llt/safetensors.h"

#include <cstdio>
#include <fstream>
#include <limits>
#include <set>
#include <system_error>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"

namespace llt {
namespace {

using nlohmann::json;

struct DtypeName {
  const char* name;
  c10::ScalarType dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F64", c10::kDouble}, {"F32", c10::kFloat}, {"F16", c10::kHalf},  {"BF16", c10::kBFloat16},
    {"I64", c10::kLong},   {"I32", c10::kInt},   {"I16", c10::kShort}, {"I8", c10::kChar},
    {"U8", c10::kByte},    {"BOOL", c10::kBool},
};

bool dtype_from_name(const std::string& name, c10::ScalarType* dtype) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      *dtype = d.dtype;
      return true;
    }
  }
  return false;
}

const char* dtype_to_name(c10::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return nullptr;
}

// numel * element size, or throws if it overflows 64 bits.
uint64_t byte_size(const std::vector<int64_t>& shape, c10::ScalarType dtype,
                   const std::string& where) {
  uint64_t bytes = c10::elementSize(dtype);
  for (int64_t d : shape) {
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      throw InputError(where + " has a shape whose byte size overflows: " + shape_string(shape));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  return bytes;
}

// A JSON value that must be a non-negative integer.
uint64_t as_count(const json& value, const std::string& where) {
  if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0)) {
    throw InputError(where + " must be a non-negative integer, got " + value.dump());
  }
  return value.get<uint64_t>();
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : file_(path) {
  const std::string source = path.string();
  uint64_t header_length = 0;
  if (file_.size() < 8) {
    throw InputError(source + ": " + std::to_string(file_.size()) +
                     " bytes is too short for a safetensors file (8-byte header length)");
  }
  unsigned char length_bytes[8];
  file_.read(0, length_bytes, 8, "the header length");
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  if (header_length > kMaxSafetensorsHeader || header_length > file_.size() - 8) {
    throw InputError(source + ": safetensors header length " + std::to_string(header_length) +
                     " exceeds the file size (" + std::to_string(file_.size()) +
                     " bytes); truncated or not a safetensors file?");
  }
  std::string text(header_length, '\0');
  file_.read(8, text.data(), header_length, "the JSON header");
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw InputError(source + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw InputError(source + ": safetensors header is not a JSON object");

  const uint64_t data_start = 8 + header_length;
  const uint64_t data_size = file_.size() - data_start;
  for (const auto& [name, entry] : header.items()) {
    const std::string where = source + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!entry.is_object()) throw InputError(source + ": __metadata__ is not a JSON object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          throw InputError(source + ": __metadata__ value of '" + key + "' is not a string");
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      throw InputError(where + " needs \"dtype\", \"shape\" and \"data_offsets\"");
    }
    TensorInfo info{name, c10::kFloat, {}};
    if (!entry["dtype"].is_string() ||
        !dtype_from_name(entry["dtype"].get<std::string>(), &info.dtype)) {
      throw InputError(where + " has unsupported dtype " + entry["dtype"].dump() +
                       " (expected F64, F32, F16, BF16, I64, I32, I16, I8, U8 or BOOL)");
    }
    if (!entry["shape"].is_array()) throw InputError(where + ": \"shape\" is not an array");
    for (const auto& d : entry["shape"]) {
      const uint64_t size = as_count(d, where + " shape entry");
      if (size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        throw InputError(where + " shape entry " + d.dump() + " is too large");
      }
      info.shape.push_back(static_cast<int64_t>(size));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      throw InputError(where + ": \"data_offsets\" must be [begin, end], got " + offsets.dump());
    }
    const uint64_t begin = as_count(offsets[0], where + " data_offsets[0]");
    const uint64_t end = as_count(offsets[1], where + " data_offsets[1]");
    if (begin > end || end > data_size) {
      throw InputError(where + " has data_offsets [" + std::to_string(begin) + ", " +
                       std::to_string(end) + "] outside the data section (" +
                       std::to_string(data_size) + " bytes); truncated file?");
    }
    const uint64_t expected = byte_size(info.shape, info.dtype, where);
    if (end - begin != expected) {
      throw InputError(where + " spans " + std::to_string(end - begin) + " bytes but shape " +
                       shape_string(info.shape) + " of " + entry["dtype"].get<std::string>() +
                       " needs " + std::to_string(expected));
    }
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(info));
    ranges_.emplace_back(data_start + begin, data_start + end);
  }
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::pair<uint64_t, uint64_t> SafetensorsFile::byte_range(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    throw InputError(path().string() + ": no tensor '" + name + "' in this safetensors file");
  }
  return ranges_[it->second];
}

at::Tensor SafetensorsFile::read(const std::string& name) {
  const auto [begin, end] = byte_range(name);
  const TensorInfo& info = *find(name);
  at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(info.dtype));
  file_.read(begin, out.data_ptr(), end - begin, "tensor '" + name + "'");
  return out;
}

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     const std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), tmp_(path.string() + ".tmp"), tensors_(tensors) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& info : tensors_) {
    const char* dtype = dtype_to_name(info.dtype);
    if (dtype == nullptr) {
      throw InputError(path.string() + ": cannot write tensor '" + info.name + "' of dtype " +
                       std::string(c10::toString(info.dtype)) + " to safetensors");
    }
    if (info.name == "__metadata__" || header.contains(info.name)) {
      throw InputError(path.string() + ": duplicate or reserved tensor name '" + info.name + "'");
    }
    const uint64_t bytes = byte_size(info.shape, info.dtype, path.string() + ": " + info.name);
    header[info.name] = {
        {"dtype", dtype}, {"shape", info.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the Rust writer
  file_bytes_ = 8 + text.size() + offset;

  out_ = std::make_unique<std::ofstream>(tmp_, std::ios::binary | std::ios::trunc);
  if (!*out_) fail("cannot open for writing");
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  out_->write(reinterpret_cast<const char*>(length_bytes), 8);
  out_->write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!*out_) fail("write of the header failed (disk full?)");
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!out_) return;  // finished, or failed (fail() removed the temp file)
  out_.reset();
  std::error_code ignored;
  std::filesystem::remove(tmp_, ignored);
}

void SafetensorsWriter::fail(const std::string& what) {
  out_.reset();
  std::error_code ignored;
  std::filesystem::remove(tmp_, ignored);
  throw RuntimeError(tmp_.string() + ": " + what);
}

void SafetensorsWriter::write(const std::string& name, const at::Tensor& tensor) {
  if (!out_) throw RuntimeError(tmp_.string() + ": write after finish() or a failure");
  if (next_ == tensors_.size() || tensors_[next_].name != name ||
      tensors_[next_].dtype != tensor.scalar_type() || tensors_[next_].shape != tensor.sizes().vec()) {
    fail("internal: tensor '" + name + "' (" + std::string(c10::toString(tensor.scalar_type())) +
         " " + shape_string(tensor.sizes()) + ") is not the next one the header declares" +
         (next_ < tensors_.size() ? " ('" + tensors_[next_].name + "')" : std::string()));
  }
  const at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
  out_->write(static_cast<const char*>(cpu.data_ptr()),
              static_cast<std::streamsize>(cpu.numel() * cpu.element_size()));
  if (!*out_) fail("write of tensor '" + name + "' failed (disk full?)");
  ++next_;
}

void SafetensorsWriter::finish() {
  if (!out_) throw RuntimeError(tmp_.string() + ": finish() after finish() or a failure");
  if (next_ != tensors_.size()) {
    fail("internal: finished with tensor '" + tensors_[next_].name + "' and " +
         std::to_string(tensors_.size() - next_ - 1) + " more unwritten");
  }
  out_->flush();
  if (!*out_) fail("write failed (disk full?)");
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

void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorInfo> infos;
  for (const auto& [name, tensor] : tensors) {
    infos.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  }
  SafetensorsWriter writer(path, infos, metadata);
  for (const auto& [name, tensor] : tensors) writer.write(name, tensor);
  writer.finish();
}

}  // namespace llt
