#include "llt/shards.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <set>
#include <string_view>
#include <system_error>

#include <hdf5.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/json_fields.h"
#include "llt/sha256.h"

namespace llt {
namespace fs = std::filesystem;

namespace {

// Elements per HDF5 chunk: 64 Ki ids are 256 KiB, the unit of compression and checksumming.
constexpr hsize_t kChunkElements = hsize_t{1} << 16;
// Deflate level: 4 compresses token ids about as well as 9 at a fraction of the time.
constexpr unsigned kDeflateLevel = 4;
// Growth step of a shard's in-memory image (HDF5 core driver); shards are a few MiB at most.
constexpr size_t kCoreIncrement = size_t{1} << 20;

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// HDF5 prints an error stack to stderr by default; llt reports errors itself (one line).
void silence_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* e, void* out) {
  auto* text = static_cast<std::string*>(out);
  if (e->desc != nullptr && *e->desc != '\0') *text = e->desc;  // keep the innermost
  return 0;
}

// The innermost message of HDF5's current error stack (then cleared), e.g. "truncated file".
std::string hdf5_error() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &text);
  H5Eclear2(H5E_DEFAULT);
  text = text.substr(0, text.find('\n'));  // e.g. "file write failed: time = <ctime>\n, ..."
  return text.empty() ? "HDF5 call failed" : text;
}

// An HDF5 id closed on scope exit.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Id() {
    if (id_ >= 0) close_(id_);
  }
  Id(Id&& other) noexcept : id_(other.id_), close_(other.close_) { other.id_ = -1; }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id& operator=(Id&&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// Where a failure happened, for messages: "<file>: <what>: <hdf5 says>".
struct Where {
  std::string file;
  [[noreturn]] void runtime(const std::string& what) const {
    throw RuntimeError(file + ": " + what + ": " + hdf5_error());
  }
  [[noreturn]] void input(const std::string& what) const { throw InputError(file + ": " + what); }
  [[noreturn]] void input_hdf5(const std::string& what) const {
    throw InputError(file + ": " + what + " (" + hdf5_error() + ")");
  }
  void check(herr_t status, const std::string& what) const {
    if (status < 0) runtime(what);
  }
};

// ----- writing

void write_int_attribute(hid_t file, const char* name, int64_t value, const Where& where) {
  const Id space(H5Screate(H5S_SCALAR), H5Sclose);
  const Id attr(H5Acreate2(file, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                H5Aclose);
  if (!attr.ok()) where.runtime(std::string("cannot create attribute '") + name + "'");
  where.check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), name);
}

// A fixed-length UTF-8 string (h5py reads it as bytes; llt reads fixed and variable length).
void write_string_attribute(hid_t file, const char* name, const std::string& value,
                            const Where& where) {
  const Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  where.check(H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)), name);
  where.check(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), name);
  where.check(H5Tset_cset(type.get(), H5T_CSET_UTF8), name);
  const Id space(H5Screate(H5S_SCALAR), H5Sclose);
  const Id attr(H5Acreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                H5Aclose);
  if (!attr.ok()) where.runtime(std::string("cannot create attribute '") + name + "'");
  std::string buffer = value;
  buffer.resize(std::max<size_t>(value.size(), 1), '\0');
  where.check(H5Awrite(attr.get(), type.get(), buffer.data()), name);
}

template <typename T>
void write_dataset(hid_t file, const char* name, const std::vector<T>& values, hid_t file_type,
                   hid_t memory_type, const Where& where) {
  const hsize_t n = values.size();
  const Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  const Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  where.check(H5Pset_obj_track_times(dcpl.get(), false), name);  // identical bytes every run
  if (n > 0) {  // HDF5 cannot chunk an empty fixed-size dataset
    const hsize_t chunk = std::min(n, kChunkElements);
    where.check(H5Pset_chunk(dcpl.get(), 1, &chunk), name);
    where.check(H5Pset_shuffle(dcpl.get()), name);
    where.check(H5Pset_deflate(dcpl.get(), kDeflateLevel), name);
    where.check(H5Pset_fletcher32(dcpl.get()), name);
  }
  const Id ds(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
              H5Dclose);
  if (!ds.ok()) where.runtime(std::string("cannot create dataset '") + name + "'");
  if (n > 0) {
    where.check(H5Dwrite(ds.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
                std::string("cannot write dataset '") + name + "'");
  }
}

void check_filters(const Where& where) {
  for (const H5Z_filter_t f : {H5Z_FILTER_DEFLATE, H5Z_FILTER_SHUFFLE, H5Z_FILTER_FLETCHER32}) {
    if (H5Zfilter_avail(f) <= 0) {
      throw RuntimeError(where.file + ": this HDF5 library lacks filter " + std::to_string(f) +
                         " (deflate, shuffle, fletcher32 are needed)");
    }
  }
}

// The shard's file bytes, built in memory by HDF5's core driver with no backing store. HDF5 never
// writes to disk here, so a full disk is write_file's error, not an HDF5 file left open with
// unflushed data (which crashed HDF5's library shutdown at exit); every handle is an Id, closed
// on every path.
std::string build_hdf5_image(const fs::path& path, const ShardData& data,
                             const ShardAttributes& a) {
  const Where where{path.string()};
  check_filters(where);
  const Id fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  where.check(H5Pset_obj_track_times(fcpl.get(), false), "file creation properties");
  const Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  where.check(H5Pset_fapl_core(fapl.get(), kCoreIncrement, /*backing_store=*/false),
              "file access properties");
  const Id file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), H5Fclose);
  if (!file.ok()) where.runtime("cannot create HDF5 file");
  const hid_t f = file.get();
  write_int_attribute(f, "format_version", a.format_version, where);
  write_string_attribute(f, "tokenizer_sha256", a.tokenizer_sha256, where);
  write_int_attribute(f, "vocab_size", a.vocab_size, where);
  write_int_attribute(f, "bos_id", a.bos_id, where);
  write_int_attribute(f, "eos_id", a.eos_id, where);
  write_string_attribute(f, "template", a.template_name, where);
  write_int_attribute(f, "max_len", a.max_len, where);
  write_string_attribute(f, "source_sha256", a.source_sha256, where);
  write_int_attribute(f, "first_index", a.first_index, where);
  write_dataset(f, "input_ids", data.input_ids, H5T_STD_I32LE, H5T_NATIVE_INT32, where);
  write_dataset(f, "offsets", data.offsets, H5T_STD_I64LE, H5T_NATIVE_INT64, where);
  write_dataset(f, "source_lengths", data.source_lengths, H5T_STD_I32LE, H5T_NATIVE_INT32, where);
  write_dataset(f, "source_indices", data.source_indices, H5T_STD_I64LE, H5T_NATIVE_INT64, where);
  where.check(H5Fflush(f, H5F_SCOPE_LOCAL), "flush");
  const ssize_t size = H5Fget_file_image(f, nullptr, 0);
  if (size < 0) where.runtime("cannot get the file image");
  std::string image(static_cast<size_t>(size), '\0');
  if (H5Fget_file_image(f, image.data(), image.size()) != size) {
    where.runtime("cannot get the file image");
  }
  return image;
}

// ----- reading

Id open_attribute(hid_t file, const char* name, H5T_class_t expected, const Where& where) {
  if (H5Aexists(file, name) <= 0) where.input(std::string("missing attribute '") + name + "'");
  Id attr(H5Aopen(file, name, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) where.input_hdf5(std::string("cannot open attribute '") + name + "'");
  const Id type(H5Aget_type(attr.get()), H5Tclose);
  const Id space(H5Aget_space(attr.get()), H5Sclose);
  if (H5Tget_class(type.get()) != expected || H5Sget_simple_extent_npoints(space.get()) != 1) {
    where.input(std::string("attribute '") + name + "' is not a single " +
                (expected == H5T_INTEGER ? "integer" : "string"));
  }
  return attr;
}

int64_t read_int_attribute(hid_t file, const char* name, const Where& where) {
  const Id attr = open_attribute(file, name, H5T_INTEGER, where);
  int64_t value = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &value) < 0) {
    where.input_hdf5(std::string("cannot read attribute '") + name + "'");
  }
  return value;
}

std::string read_string_attribute(hid_t file, const char* name, const Where& where) {
  const Id attr = open_attribute(file, name, H5T_STRING, where);
  const Id type(H5Aget_type(attr.get()), H5Tclose);
  const Id memory(H5Tcopy(type.get()), H5Tclose);
  const std::string what = std::string("cannot read attribute '") + name + "'";
  if (H5Tis_variable_str(type.get()) > 0) {  // as h5py writes Python str
    char* raw = nullptr;
    if (H5Aread(attr.get(), memory.get(), &raw) < 0) where.input_hdf5(what);
    std::string value = raw != nullptr ? raw : "";
    H5free_memory(raw);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  if (H5Aread(attr.get(), memory.get(), value.data()) < 0) where.input_hdf5(what);
  value.resize(std::min(value.size(), value.find('\0')));
  return value;
}

// Reads a 1-D integer dataset whose stored integers fit T.
template <typename T>
std::vector<T> read_dataset(hid_t file, const char* name, hid_t memory_type, const Where& where) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    where.input(std::string("missing dataset '") + name + "'");
  }
  const Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) where.input_hdf5(std::string("cannot open dataset '") + name + "'");
  const Id type(H5Dget_type(ds.get()), H5Tclose);
  const Id space(H5Dget_space(ds.get()), H5Sclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) > sizeof(T) ||
      H5Sget_simple_extent_ndims(space.get()) != 1) {
    where.input(std::string("dataset '") + name + "': expected 1-D integers of at most " +
                std::to_string(8 * sizeof(T)) + " bits");
  }
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  std::vector<T> values(n);
  if (n > 0 && H5Dread(ds.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0) {
    where.input_hdf5(std::string("cannot read dataset '") + name +
                     "' (corrupt or truncated shard)");
  }
  return values;
}

void check_shard(const Shard& s, const Where& where) {
  const ShardData& d = s.data;
  const ShardAttributes& a = s.attributes;
  if (a.format_version != kShardFormatVersion) {
    where.input("attribute 'format_version' is " + std::to_string(a.format_version) +
                ", this llt reads version " + std::to_string(kShardFormatVersion));
  }
  const size_t n = d.source_lengths.size();
  if (d.offsets.size() != n + 1 || d.source_indices.size() != n) {
    where.input("dataset sizes disagree: offsets " + std::to_string(d.offsets.size()) +
                ", source_lengths " + std::to_string(n) + ", source_indices " +
                std::to_string(d.source_indices.size()) + " (expected n+1, n, n)");
  }
  if (d.offsets.front() != 0 || d.offsets.back() != d.tokens()) {
    where.input("offsets run from " + std::to_string(d.offsets.front()) + " to " +
                std::to_string(d.offsets.back()) + ", expected 0 to " + std::to_string(d.tokens()) +
                " (the size of input_ids)");
  }
  for (size_t i = 0; i < n; ++i) {
    const int64_t length = d.offsets[i + 1] - d.offsets[i];
    if (length < 2 || length > a.max_len || d.source_lengths[i] < 1 ||
        d.source_lengths[i] >= length) {
      where.input("sample " + std::to_string(i) + ": length " + std::to_string(length) +
                  ", source_length " + std::to_string(d.source_lengths[i]) +
                  " (expected 1 <= source_length < length <= max_len " + std::to_string(a.max_len) +
                  ")");
    }
  }
  for (size_t i = 0; i < d.input_ids.size(); ++i) {
    if (d.input_ids[i] < 0 || d.input_ids[i] >= a.vocab_size) {
      where.input("input_ids[" + std::to_string(i) + "] = " + std::to_string(d.input_ids[i]) +
                  " is outside the vocabulary [0, " + std::to_string(a.vocab_size) + ")");
    }
  }
  if (n > 0 && d.source_indices.front() != a.first_index) {
    where.input("attribute 'first_index' is " + std::to_string(a.first_index) +
                " but the first sample's source index is " +
                std::to_string(d.source_indices.front()));
  }
}

// ----- manifest JSON

template <typename T>
T get(const nlohmann::json& j, const char* key, const std::string& file) {
  const auto it = j.find(key);
  if (it == j.end()) throw InputError(file + ": missing key '" + key + "'");
  // json_holds: get<int64_t>() would truncate 2.5 and overflow (undefined) on 1e300.
  if (!json_holds<T>(*it)) {
    throw InputError(file + ": key '" + key + "' has the wrong type (" + it->type_name() + ")");
  }
  return it->get<T>();
}

}  // namespace

void ShardData::add(const std::vector<int32_t>& ids, int32_t source_length, int64_t source_index) {
  input_ids.insert(input_ids.end(), ids.begin(), ids.end());
  offsets.push_back(static_cast<int64_t>(input_ids.size()));
  source_lengths.push_back(source_length);
  source_indices.push_back(source_index);
}

std::string shard_file_name(int64_t generation, int64_t index) {
  char name[64];
  std::snprintf(name, sizeof(name), "shard-g%lld-%05lld.h5", static_cast<long long>(generation),
                static_cast<long long>(index));
  return name;
}

int64_t shard_file_generation(const std::string& name) {
  const auto digits = [](std::string_view s) {
    return !s.empty() && s.size() <= 18 &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  std::string_view s(name);
  if (ends_with(s, ".tmp")) s.remove_suffix(4);
  if (!starts_with(s, "shard-") || !ends_with(s, ".h5")) return -1;
  s = s.substr(6, s.size() - 9);  // "g3-00000" or "00000"
  int64_t generation = 0;
  if (starts_with(s, "g")) {
    const size_t dash = s.find('-');
    if (dash == std::string_view::npos || !digits(s.substr(1, dash - 1))) return -1;
    generation = std::stoll(std::string(s.substr(1, dash - 1)));
    if (generation < 1) return -1;
    s = s.substr(dash + 1);
  }
  return s.size() >= 5 && digits(s) ? generation : -1;
}

void write_shard(const fs::path& path, const ShardData& data, const ShardAttributes& attributes) {
  silence_hdf5();
  write_file_atomic(path, build_hdf5_image(path, data, attributes), /*overwrite=*/true);
}

Shard read_shard(const fs::path& path) {
  silence_hdf5();
  const Where where{path.string()};
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) where.input("no such shard file");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    where.input("not an HDF5 file (corrupt, truncated or not a shard)");
  }
  const Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) where.input_hdf5("cannot open the HDF5 file (corrupt or truncated?)");
  const hid_t f = file.get();
  Shard s;
  ShardAttributes& a = s.attributes;
  a.format_version = read_int_attribute(f, "format_version", where);
  a.tokenizer_sha256 = read_string_attribute(f, "tokenizer_sha256", where);
  a.vocab_size = read_int_attribute(f, "vocab_size", where);
  a.bos_id = read_int_attribute(f, "bos_id", where);
  a.eos_id = read_int_attribute(f, "eos_id", where);
  a.template_name = read_string_attribute(f, "template", where);
  a.max_len = read_int_attribute(f, "max_len", where);
  a.source_sha256 = read_string_attribute(f, "source_sha256", where);
  a.first_index = read_int_attribute(f, "first_index", where);
  s.data.input_ids = read_dataset<int32_t>(f, "input_ids", H5T_NATIVE_INT32, where);
  s.data.offsets = read_dataset<int64_t>(f, "offsets", H5T_NATIVE_INT64, where);
  s.data.source_lengths = read_dataset<int32_t>(f, "source_lengths", H5T_NATIVE_INT32, where);
  s.data.source_indices = read_dataset<int64_t>(f, "source_indices", H5T_NATIVE_INT64, where);
  if (s.data.offsets.empty()) where.input("dataset 'offsets' is empty (expected n+1 entries)");
  check_shard(s, where);
  return s;
}

void LengthHistogram::add(int64_t length) {
  const bool first = counts.empty();
  const auto bin = static_cast<size_t>(length / bin_width);
  if (counts.size() <= bin) counts.resize(bin + 1, 0);
  ++counts[bin];
  min = first ? length : std::min(min, length);
  max = first ? length : std::max(max, length);
}

std::string samples_sha256(const Manifest& m) {
  const ShardAttributes& a = m.attributes;
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const auto& s : m.shards) {
    shards.push_back({s.samples, s.tokens, s.first_index, s.sha256});
  }
  nlohmann::ordered_json j = {{"format_version", m.format_version},
                              {"template", a.template_name},
                              {"source_sha256", a.source_sha256},
                              {"tokenizer_sha256", a.tokenizer_sha256},
                              {"max_len", a.max_len},
                              {"start", m.start},
                              {"end", m.end},
                              {"samples", m.samples},
                              {"tokens", m.tokens},
                              {"shards", shards}};
  return sha256_hex(j.dump());
}

std::string manifest_json(const Manifest& m) {
  const ShardAttributes& a = m.attributes;
  nlohmann::ordered_json bad = nlohmann::ordered_json::array();
  for (const auto& b : m.bad_records) {
    bad.push_back({{"index", b.index}, {"field", b.field}, {"reason", b.reason}});
  }
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const auto& s : m.shards) {
    shards.push_back({{"file", s.file},
                      {"samples", s.samples},
                      {"tokens", s.tokens},
                      {"first_index", s.first_index},
                      {"sha256", s.sha256}});
  }
  // Insertion order is kept (ordered_json), so the file reads top-down: what, from what, counts.
  nlohmann::ordered_json j;
  j["format_version"] = m.format_version;
  j["generation"] = m.generation;
  j["template"] = a.template_name;
  j["input"] = m.input;
  j["input_format"] = m.input_format;
  j["source_sha256"] = a.source_sha256;
  j["tokenizer"] = m.tokenizer;
  j["tokenizer_sha256"] = a.tokenizer_sha256;
  j["vocab_size"] = a.vocab_size;
  j["bos_id"] = a.bos_id;
  j["eos_id"] = a.eos_id;
  j["max_len"] = a.max_len;
  j["split"] = m.split;
  j["start"] = m.start;
  j["end"] = m.end;
  j["records"] = m.records;
  j["samples"] = m.samples;
  j["tokens"] = m.tokens;
  j["source_tokens"] = m.source_tokens;
  j["label_tokens"] = m.label_tokens;
  j["truncated"] = m.truncated;
  j["dropped_no_label"] = m.dropped_no_label;
  j["prompt_not_prefix"] = m.prompt_not_prefix;
  j["skipped_bad_records"] = m.skipped_bad_records;
  j["bad_records"] = bad;
  j["length_histogram"] = {{"bin_width", m.length_histogram.bin_width},
                           {"min", m.length_histogram.min},
                           {"max", m.length_histogram.max},
                           {"counts", m.length_histogram.counts}};
  j["command_line"] = m.command_line;
  j["shards"] = shards;
  return j.dump(2) + "\n";
}

void write_manifest(const fs::path& dir, const Manifest& m) {
  write_file_atomic(dir / "manifest.json", manifest_json(m), /*overwrite=*/true);
}

Manifest read_manifest(const fs::path& dir) {
  const fs::path path = dir / "manifest.json";
  const std::string file = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    throw InputError(file + ": no such file (not a finished llt-tokenize dataset directory)");
  }
  const nlohmann::json j = parse_json(read_file(path), file);
  if (!j.is_object()) throw InputError(file + ": expected a JSON object");
  Manifest m;
  ShardAttributes& a = m.attributes;
  m.format_version = get<int64_t>(j, "format_version", file);
  a.format_version = m.format_version;
  m.generation = j.contains("generation") ? get<int64_t>(j, "generation", file) : 0;
  a.template_name = get<std::string>(j, "template", file);
  m.input = get<std::string>(j, "input", file);
  m.input_format = get<std::string>(j, "input_format", file);
  a.source_sha256 = get<std::string>(j, "source_sha256", file);
  m.tokenizer = get<std::string>(j, "tokenizer", file);
  a.tokenizer_sha256 = get<std::string>(j, "tokenizer_sha256", file);
  a.vocab_size = get<int64_t>(j, "vocab_size", file);
  a.bos_id = get<int64_t>(j, "bos_id", file);
  a.eos_id = get<int64_t>(j, "eos_id", file);
  a.max_len = get<int64_t>(j, "max_len", file);
  m.split = get<std::string>(j, "split", file);
  m.start = get<int64_t>(j, "start", file);
  m.end = get<int64_t>(j, "end", file);
  m.records = get<int64_t>(j, "records", file);
  m.samples = get<int64_t>(j, "samples", file);
  m.tokens = get<int64_t>(j, "tokens", file);
  m.source_tokens = get<int64_t>(j, "source_tokens", file);
  m.label_tokens = get<int64_t>(j, "label_tokens", file);
  m.truncated = get<int64_t>(j, "truncated", file);
  m.dropped_no_label = get<int64_t>(j, "dropped_no_label", file);
  m.prompt_not_prefix = get<int64_t>(j, "prompt_not_prefix", file);
  m.skipped_bad_records = get<int64_t>(j, "skipped_bad_records", file);
  for (const auto& b : get<nlohmann::json>(j, "bad_records", file)) {
    m.bad_records.push_back({get<int64_t>(b, "index", file), get<std::string>(b, "field", file),
                             get<std::string>(b, "reason", file)});
  }
  const auto h = get<nlohmann::json>(j, "length_histogram", file);
  m.length_histogram.bin_width = get<int64_t>(h, "bin_width", file);
  m.length_histogram.min = get<int64_t>(h, "min", file);
  m.length_histogram.max = get<int64_t>(h, "max", file);
  m.length_histogram.counts = get<std::vector<int64_t>>(h, "counts", file);
  m.command_line = get<std::string>(j, "command_line", file);
  const auto shards = get<nlohmann::json>(j, "shards", file);
  if (!shards.is_array()) throw InputError(file + ": key 'shards' is not an array");
  // Each shard once (a shard listed twice would be trained on twice an epoch), and inside `dir`.
  std::set<std::string> seen;
  for (const auto& s : shards) {
    m.shards.push_back({get<std::string>(s, "file", file), get<int64_t>(s, "samples", file),
                        get<int64_t>(s, "tokens", file), get<int64_t>(s, "first_index", file),
                        get<std::string>(s, "sha256", file)});
    const std::string& name = m.shards.back().file;
    const std::string key = "key 'shards[" + std::to_string(m.shards.size() - 1) + "].file'";
    const fs::path normal = fs::path(name).lexically_normal();
    if (name.empty() || normal.has_root_path() || normal == "." || *normal.begin() == "..") {
      throw InputError(file + ": " + key + " is '" + name +
                       "', expected a path inside the dataset directory");
    }
    if (!seen.insert(normal.string()).second) {
      throw InputError(file + ": " + key + " is '" + name +
                       "', a shard listed before (each shard is listed once)");
    }
  }
  return m;
}

}  // namespace llt
