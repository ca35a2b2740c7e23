#include "llt/pth.h"

#include <algorithm>
#include <cstring>
#include <tuple>
#include <unordered_set>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>

#include "llt/errors.h"

namespace llt {
namespace {

// ---------------------------------------------------------------------------------------------
// The pickle subset torch.save writes for a state dict (protocol 2; a few protocol 3-5 opcodes
// are accepted too). Values are built on a stack, as Python's pickle machine does.

enum class Kind {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kBytes,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

const char* kind_name(Kind kind) {
  static const char* const kNames[] = {"None",  "bool", "int",  "float",  "str",     "bytes",
                                       "tuple", "list", "dict", "global", "storage", "tensor"};
  return kNames[static_cast<int>(kind)];
}

// Pickle opcodes (CPython Lib/pickle.py), those torch.save writes for a state dict and a few
// neighbours of later protocols.
// clang-format off
enum Opcode : uint8_t {
  kMark = '(', kStop = '.', kPop = '0', kPopMark = '1', kDup = '2', kBinFloat = 'G',
  kBinInt = 'J', kBinInt1 = 'K', kBinInt2 = 'M', kNone = 'N', kBinPersId = 'Q', kReduce = 'R',
  kBinString = 'T', kShortBinString = 'U', kBinUnicode = 'X', kAppend = 'a', kBuild = 'b',
  kGlobal = 'c', kDict = 'd', kAppends = 'e', kBinGet = 'h', kLongBinGet = 'j', kList = 'l',
  kBinPut = 'q', kLongBinPut = 'r', kSetItem = 's', kTuple = 't', kSetItems = 'u',
  kEmptyDict = '}', kEmptyList = ']', kEmptyTuple = ')', kBinBytes = 'B', kShortBinBytes = 'C',
  kProto = 0x80, kTuple1 = 0x85, kTuple2 = 0x86, kTuple3 = 0x87, kNewTrue = 0x88,
  kNewFalse = 0x89, kLong1 = 0x8a, kShortBinUnicode = 0x8c, kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e, kStackGlobal = 0x93, kMemoize = 0x94, kFrame = 0x95,
};
// clang-format on

struct Value;
// Values are owned by the PickleMachine that made them (its arena), not by each other: a pickle
// may make a list that holds itself (memo GET, then APPEND), which shared ownership would leak.
using ValuePtr = Value*;

struct Value {
  Kind kind = Kind::kNone;
  int64_t integer = 0;                                 // kInt, kBool
  std::string text;                                    // kString, kBytes, kGlobal "module.name"
  std::vector<ValuePtr> items;                         // kTuple, kList
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // kDict
  PthTensorRecord tensor;  // kStorage: dtype, storage_key, storage_numel; kTensor: all but name
};

// Storage class names of torch.save ('torch', 'BFloat16Storage', ...).
bool storage_dtype(const std::string& global, c10::ScalarType* dtype) {
  static const std::pair<const char*, c10::ScalarType> kStorages[] = {
      {"torch.FloatStorage", c10::kFloat}, {"torch.DoubleStorage", c10::kDouble},
      {"torch.HalfStorage", c10::kHalf},   {"torch.BFloat16Storage", c10::kBFloat16},
      {"torch.LongStorage", c10::kLong},   {"torch.IntStorage", c10::kInt},
      {"torch.ShortStorage", c10::kShort}, {"torch.CharStorage", c10::kChar},
      {"torch.ByteStorage", c10::kByte},   {"torch.BoolStorage", c10::kBool},
  };
  for (const auto& [name, type] : kStorages) {
    if (global == name) {
      *dtype = type;
      return true;
    }
  }
  return false;
}

class PickleMachine {
 public:
  PickleMachine(const std::string& data, const std::string& source)
      : data_(data), source_(source) {}

  ValuePtr run() {
    while (true) {
      const size_t at = pos_;
      const uint8_t op = u8();
      if (op == kStop) {
        if (stack_.size() != 1 || !marks_.empty()) fail(at, "stack is not one value at STOP");
        return stack_.back();
      }
      step(op, at);
    }
  }

 private:
  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw InputError(source_ + ": bad pickle at byte " + std::to_string(at) + ": " + what);
  }

  // --- reading bytes
  uint8_t u8() {
    if (pos_ >= data_.size()) fail(pos_, "unexpected end of data (truncated?)");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t little_endian(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(u8()) << (8 * i);
    return v;
  }
  std::string bytes(uint64_t n) {
    if (n > data_.size() - pos_) {
      fail(pos_, "a " + std::to_string(n) + "-byte string runs past the end");
    }
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) fail(pos_, "unterminated GLOBAL name");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }

  ValuePtr make(Kind kind) {
    arena_.push_back(std::make_unique<Value>());
    arena_.back()->kind = kind;
    return arena_.back().get();
  }

  // --- the stack
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr pop(size_t at) {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail(at, "stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  ValuePtr& top(size_t at) {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail(at, "stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark(size_t at) {
    if (marks_.empty()) fail(at, "no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  ValuePtr make_sequence(Kind kind, std::vector<ValuePtr> items) {
    auto v = make(kind);
    v->items = std::move(items);
    return v;
  }
  void set_items(size_t at, const std::vector<ValuePtr>& items) {
    ValuePtr& dict = top(at);
    if (dict->kind != Kind::kDict) fail(at, std::string("SETITEMS on a ") + kind_name(dict->kind));
    if (items.size() % 2 != 0) fail(at, "SETITEMS with an odd number of values");
    for (size_t i = 0; i < items.size(); i += 2) dict->entries.emplace_back(items[i], items[i + 1]);
  }
  void append_items(size_t at, const std::vector<ValuePtr>& items) {
    ValuePtr& list = top(at);
    if (list->kind != Kind::kList) fail(at, std::string("APPENDS on a ") + kind_name(list->kind));
    list->items.insert(list->items.end(), items.begin(), items.end());
  }
  void memo_put(size_t at, uint64_t key) { memo_[key] = top(at); }
  void memo_get(size_t at, uint64_t key) {
    const auto it = memo_.find(key);
    if (it == memo_.end()) fail(at, "memo key " + std::to_string(key) + " was never stored");
    push(it->second);
  }
  ValuePtr boolean(bool value) {
    auto v = make(Kind::kBool);
    v->integer = value;
    return v;
  }
  ValuePtr integer(int64_t value) {
    auto v = make(Kind::kInt);
    v->integer = value;
    return v;
  }
  ValuePtr string(Kind kind, std::string text) {
    auto v = make(kind);
    v->text = std::move(text);
    return v;
  }

  // clang-format off
  void step(uint8_t op, size_t at) {
    switch (op) {
      case kProto: {
        const uint8_t version = u8();
        if (version > 5) fail(at, "pickle protocol " + std::to_string(version) + " is unknown");
        break;
      }
      case kFrame: little_endian(8); break;  // a length hint
      case kMark: marks_.push_back(stack_.size()); break;
      case kEmptyDict: push(make(Kind::kDict)); break;
      case kEmptyList: push(make(Kind::kList)); break;
      case kEmptyTuple: push(make(Kind::kTuple)); break;
      case kNone: push(make(Kind::kNone)); break;
      case kNewTrue: push(boolean(true)); break;
      case kNewFalse: push(boolean(false)); break;
      case kBinInt: push(integer(static_cast<int32_t>(little_endian(4)))); break;
      case kBinInt1: push(integer(u8())); break;
      case kBinInt2: push(integer(static_cast<int64_t>(little_endian(2)))); break;
      case kLong1: push(integer(long1(at))); break;
      case kBinFloat: bytes(8); push(make(Kind::kFloat)); break;  // value never needed
      case kBinUnicode: push(string(Kind::kString, bytes(little_endian(4)))); break;
      case kShortBinUnicode: push(string(Kind::kString, bytes(u8()))); break;
      case kBinUnicode8: push(string(Kind::kString, bytes(little_endian(8)))); break;
      case kShortBinString: push(string(Kind::kString, bytes(u8()))); break;
      case kBinString: push(string(Kind::kString, bytes(little_endian(4)))); break;
      case kShortBinBytes: push(string(Kind::kBytes, bytes(u8()))); break;
      case kBinBytes: push(string(Kind::kBytes, bytes(little_endian(4)))); break;
      case kBinBytes8: push(string(Kind::kBytes, bytes(little_endian(8)))); break;
      case kGlobal: {  // "module\nname\n"
        const std::string module = line();
        push(string(Kind::kGlobal, module + "." + line()));
        break;
      }
      case kStackGlobal: stack_global(at); break;
      case kTuple: push(make_sequence(Kind::kTuple, pop_mark(at))); break;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        std::vector<ValuePtr> items(op - kTuple1 + 1);
        for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop(at);
        push(make_sequence(Kind::kTuple, std::move(items)));
        break;
      }
      case kList: push(make_sequence(Kind::kList, pop_mark(at))); break;
      case kDict: {
        const auto items = pop_mark(at);
        push(make(Kind::kDict));
        set_items(at, items);
        break;
      }
      case kSetItem: {
        ValuePtr value = pop(at);
        ValuePtr key = pop(at);
        set_items(at, {key, value});
        break;
      }
      case kSetItems: set_items(at, pop_mark(at)); break;
      case kAppend: append_items(at, {pop(at)}); break;
      case kAppends: append_items(at, pop_mark(at)); break;
      case kBinPut: memo_put(at, u8()); break;
      case kLongBinPut: memo_put(at, little_endian(4)); break;
      case kMemoize: memo_put(at, memo_.size()); break;
      case kBinGet: memo_get(at, u8()); break;
      case kLongBinGet: memo_get(at, little_endian(4)); break;
      case kPop: pop(at); break;
      case kPopMark: pop_mark(at); break;
      case kDup: push(top(at)); break;
      case kBinPersId: {
        const ValuePtr pid = pop(at);
        push(persistent_load(at, *pid));
        break;
      }
      case kReduce: {
        const ValuePtr args = pop(at);
        const ValuePtr callable = pop(at);
        push(reduce(at, *callable, *args));
        break;
      }
      case kBuild: {  // sets an object's state (OrderedDict._metadata, tensor hooks): ignored
        pop(at);
        const Kind kind = top(at)->kind;
        if (kind != Kind::kDict && kind != Kind::kTensor) {
          fail(at, std::string("BUILD on a ") + kind_name(kind));
        }
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02x", op);
        fail(at, std::string("unsupported opcode ") + hex +
                     " (not something torch.save writes for a state dict)");
      }
    }
  }

  // LONG1: an n-byte little-endian two's complement integer (n <= 8 here).
  int64_t long1(size_t at) {
    const uint8_t n = u8();
    if (n > 8) fail(at, "LONG1 of " + std::to_string(n) + " bytes is too large");
    uint64_t v = n == 0 ? 0 : little_endian(n);
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) != 0) v |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(v);
  }

  void stack_global(size_t at) {
    const ValuePtr name = pop(at);
    const ValuePtr module = pop(at);
    if (name->kind != Kind::kString || module->kind != Kind::kString) {
      fail(at, "STACK_GLOBAL needs two strings");
    }
    push(string(Kind::kGlobal, module->text + "." + name->text));
  }
  // clang-format on

  // ('storage', storage_type, key, location, numel) -> a storage reference.
  ValuePtr persistent_load(size_t at, const Value& pid) {
    const auto& t = pid.items;
    if (pid.kind != Kind::kTuple || t.size() != 5 || t[0]->kind != Kind::kString ||
        t[0]->text != "storage" || t[1]->kind != Kind::kGlobal || t[2]->kind != Kind::kString ||
        t[4]->kind != Kind::kInt) {
      fail(at, "persistent id is not ('storage', type, key, location, numel)");
    }
    auto v = make(Kind::kStorage);
    if (!storage_dtype(t[1]->text, &v->tensor.dtype)) {
      fail(at, "unsupported storage type " + t[1]->text);
    }
    if (t[4]->integer < 0) fail(at, "negative storage size");
    v->tensor.storage_key = t[2]->text;
    v->tensor.storage_numel = t[4]->integer;
    return v;
  }

  ValuePtr reduce(size_t at, const Value& callable, const Value& args) {
    if (callable.kind != Kind::kGlobal || args.kind != Kind::kTuple) {
      fail(at, "REDUCE needs a global and an argument tuple");
    }
    const std::string& name = callable.text;
    if (name == "collections.OrderedDict") {
      if (!args.items.empty()) fail(at, "OrderedDict with constructor arguments");
      return make(Kind::kDict);
    }
    if (name == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(at, args.items);
    if (name == "torch._utils._rebuild_parameter" ||
        name == "torch._utils._rebuild_parameter_with_state") {
      if (args.items.empty() || args.items[0]->kind != Kind::kTensor) {
        fail(at, name + " without a tensor");
      }
      return args.items[0];
    }
    fail(at, "unsupported callable " + name + " (llt reads state dicts of plain tensors)");
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])
  ValuePtr rebuild_tensor(size_t at, const std::vector<ValuePtr>& a) {
    if (a.size() < 4 || a[0]->kind != Kind::kStorage || a[1]->kind != Kind::kInt ||
        a[2]->kind != Kind::kTuple || a[3]->kind != Kind::kTuple) {
      fail(at, "_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ...)");
    }
    auto v = make(Kind::kTensor);
    v->tensor = a[0]->tensor;
    v->tensor.storage_offset = a[1]->integer;
    for (const auto& s : a[2]->items) v->tensor.sizes.push_back(as_dim(at, *s));
    for (const auto& s : a[3]->items) v->tensor.strides.push_back(as_dim(at, *s));
    check_extent(at, v->tensor);
    return v;
  }

  int64_t as_dim(size_t at, const Value& v) {
    if (v.kind != Kind::kInt || v.integer < 0) fail(at, "tensor size or stride is not an int >= 0");
    return v.integer;
  }

  // The last element the view touches must lie inside the storage.
  void check_extent(size_t at, const PthTensorRecord& t) {
    if (t.sizes.size() != t.strides.size()) fail(at, "tensor size and stride differ in length");
    if (t.storage_offset < 0) fail(at, "negative storage offset");
    int64_t last = t.storage_offset;
    bool empty = false;
    for (size_t i = 0; i < t.sizes.size(); ++i) {
      int64_t span = 0;
      if (t.sizes[i] == 0) empty = true;
      if (t.sizes[i] > 0 && (__builtin_mul_overflow(t.sizes[i] - 1, t.strides[i], &span) ||
                             __builtin_add_overflow(last, span, &last))) {
        fail(at, "tensor extent overflows");
      }
    }
    if (!empty && last >= t.storage_numel) {
      fail(at, "tensor of size " + shape_string(t.sizes) + " at offset " +
                   std::to_string(t.storage_offset) + " overruns its storage of " +
                   std::to_string(t.storage_numel) + " elements");
    }
  }

  const std::string& data_;
  const std::string& source_;
  size_t pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;  // stack heights at each MARK
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::vector<std::unique_ptr<Value>> arena_;  // every value made, freed with the machine
};

// ---------------------------------------------------------------------------------------------
// The zip directory (PKWARE APPNOTE.TXT 4.3), checked before LibTorch's reader sees the archive.

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;    // "PK\3\4", 30 bytes + name + extra
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;  // "PK\1\2", 46 bytes + name + ...
constexpr uint32_t kEndSignature = 0x06054b50;            // "PK\5\6", 22 bytes + comment
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;   // 20 bytes, just before the end record
constexpr uint32_t kZip64EndSignature = 0x06064b50;       // 56 bytes at the locator's offset
constexpr uint64_t kEndSize = 22, kZip64LocatorSize = 20, kZip64EndSize = 56;
constexpr uint64_t kLocalHeaderSize = 30, kCentralHeaderSize = 46;
constexpr uint64_t kMaxComment = 0xffff;

uint64_t read_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct ZipEntry {
  std::string name;
  uint64_t size = 0;          // compressed = uncompressed: entries are stored
  uint64_t local_offset = 0;  // of the local header
};

// Where the central directory lies and how many entries it holds, from the end record (and the
// zip64 end record when the end record's fields are saturated).
struct ZipDirectory {
  uint64_t offset = 0, size = 0, entries = 0;
};

class ZipChecker {
 public:
  explicit ZipChecker(const std::filesystem::path& path) : file_(path), source_(path.string()) {}

  void check() {
    const ZipDirectory dir = find_directory();
    std::vector<ZipEntry> entries = read_directory(dir);
    std::sort(entries.begin(), entries.end(),
              [](const ZipEntry& a, const ZipEntry& b) { return a.local_offset < b.local_offset; });
    uint64_t previous_end = 0;
    std::string previous;
    for (const ZipEntry& e : entries) {
      if (e.local_offset < previous_end) {
        fail("entry '" + e.name + "' overlaps entry '" + previous + "'");
      }
      previous_end = check_local(e, dir.offset);
      previous = e.name;
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(source_ + ": not a readable torch.save zip archive (" + what + ")");
  }

  ZipDirectory find_directory() const {
    const uint64_t size = file_.size();
    if (size < kEndSize) fail("no end of central directory record");
    const uint64_t tail_size = std::min<uint64_t>(size, kEndSize + kMaxComment);
    std::vector<unsigned char> tail(tail_size);
    file_.read(size - tail_size, tail.data(), tail_size, "the end of the zip archive");
    // The last end record whose comment reaches exactly to the end of the file.
    for (uint64_t at = tail_size - kEndSize + 1; at-- > 0;) {
      const unsigned char* p = tail.data() + at;
      if (read_le(p, 4) != kEndSignature || at + kEndSize + read_le(p + 20, 2) != tail_size) {
        continue;
      }
      const uint64_t end_offset = size - tail_size + at;
      ZipDirectory dir{read_le(p + 16, 4), read_le(p + 12, 4), read_le(p + 10, 2)};
      if (read_le(p + 4, 2) != 0 || read_le(p + 6, 2) != 0 || read_le(p + 8, 2) != dir.entries) {
        fail("a multi-disk archive");
      }
      // torch.save writes zip64 end records (between the directory and the end record) even for
      // small archives; they are required when the end record's fields are saturated.
      uint64_t directory_end = end_offset;
      if (has_zip64_locator(end_offset) || dir.entries == 0xffff || dir.size == 0xffffffff ||
          dir.offset == 0xffffffff) {
        const ZipDirectory dir64 = read_zip64_end(end_offset, &directory_end);
        // Fields of the end record that are not saturated must agree (readers use either).
        if ((dir.entries != 0xffff && dir.entries != dir64.entries) ||
            (dir.size != 0xffffffff && dir.size != dir64.size) ||
            (dir.offset != 0xffffffff && dir.offset != dir64.offset)) {
          fail("the end record puts the central directory at " + describe(dir) +
               ", the zip64 end record at " + describe(dir64));
        }
        dir = dir64;
      }
      if (dir.offset > directory_end || dir.size != directory_end - dir.offset) {
        fail("the central directory [" + std::to_string(dir.offset) + ", +" +
             std::to_string(dir.size) + ") does not end where its end record begins (byte " +
             std::to_string(directory_end) + ")");
      }
      return dir;
    }
    fail("no end of central directory record");
  }

  static std::string describe(const ZipDirectory& dir) {
    return "[" + std::to_string(dir.offset) + ", +" + std::to_string(dir.size) + ") with " +
           std::to_string(dir.entries) + " entries";
  }

  bool has_zip64_locator(uint64_t end_offset) const {
    if (end_offset < kZip64LocatorSize) return false;
    unsigned char signature[4];
    file_.read(end_offset - kZip64LocatorSize, signature, 4, "the zip64 locator");
    return read_le(signature, 4) == kZip64LocatorSignature;
  }

  ZipDirectory read_zip64_end(uint64_t end_offset, uint64_t* directory_end) const {
    if (end_offset < kZip64LocatorSize) fail("no zip64 end of central directory locator");
    unsigned char locator[kZip64LocatorSize];
    file_.read(end_offset - kZip64LocatorSize, locator, kZip64LocatorSize, "the zip64 locator");
    if (read_le(locator, 4) != kZip64LocatorSignature) {
      fail("no zip64 end of central directory locator");
    }
    const uint64_t at = read_le(locator + 8, 8);
    if (read_le(locator + 4, 4) != 0 || read_le(locator + 16, 4) > 1) fail("a multi-disk archive");
    if (at > end_offset - kZip64LocatorSize ||
        end_offset - kZip64LocatorSize - at < kZip64EndSize) {
      fail("the zip64 end record at byte " + std::to_string(at) + " lies outside the file");
    }
    unsigned char end[kZip64EndSize];
    file_.read(at, end, kZip64EndSize, "the zip64 end record");
    if (read_le(end, 4) != kZip64EndSignature) fail("no zip64 end record");
    ZipDirectory dir{read_le(end + 48, 8), read_le(end + 40, 8), read_le(end + 32, 8)};
    if (read_le(end + 16, 4) != 0 || read_le(end + 20, 4) != 0 ||
        read_le(end + 24, 8) != dir.entries) {
      fail("a multi-disk archive");
    }
    *directory_end = at;
    return dir;
  }

  std::vector<ZipEntry> read_directory(const ZipDirectory& dir) const {
    // Each entry takes at least kCentralHeaderSize bytes: a count the size cannot hold is a lie.
    if (dir.entries == 0 || dir.entries > dir.size / kCentralHeaderSize) {
      fail(std::to_string(dir.entries) + " entries in a central directory of " +
           std::to_string(dir.size) + " bytes");
    }
    std::vector<unsigned char> bytes(dir.size);
    file_.read(dir.offset, bytes.data(), dir.size, "the zip central directory");
    std::vector<ZipEntry> entries;
    std::unordered_set<std::string> names;
    uint64_t at = 0;
    for (uint64_t i = 0; i < dir.entries; ++i) {
      if (dir.size - at < kCentralHeaderSize)
        fail("the central directory ends inside entry " + std::to_string(i));
      const unsigned char* p = bytes.data() + at;
      if (read_le(p, 4) != kCentralHeaderSignature) {
        fail("central directory entry " + std::to_string(i) + " has no signature");
      }
      const uint64_t name_length = read_le(p + 28, 2), extra_length = read_le(p + 30, 2);
      const uint64_t comment_length = read_le(p + 32, 2);
      const uint64_t length = kCentralHeaderSize + name_length + extra_length + comment_length;
      if (dir.size - at < length) {
        fail("the central directory ends inside entry " + std::to_string(i));
      }
      ZipEntry e;
      e.name.assign(reinterpret_cast<const char*>(p + kCentralHeaderSize), name_length);
      check_name(e.name);
      if (!names.insert(e.name).second) fail("entry '" + e.name + "' appears twice");
      if ((read_le(p + 8, 2) & 1) != 0) fail("entry '" + e.name + "' is encrypted");
      if (read_le(p + 10, 2) != 0) {
        fail("entry '" + e.name + "' is compressed (method " + std::to_string(read_le(p + 10, 2)) +
             "); torch.save stores entries uncompressed");
      }
      uint64_t compressed = read_le(p + 20, 4), uncompressed = read_le(p + 24, 4);
      uint64_t disk = read_le(p + 34, 2);
      e.local_offset = read_le(p + 42, 4);
      read_zip64_extra(e.name, p + kCentralHeaderSize + name_length, extra_length, &uncompressed,
                       &compressed, &e.local_offset, &disk);
      if (disk != 0) fail("a multi-disk archive");
      if (compressed != uncompressed) {
        fail("stored entry '" + e.name + "' has compressed size " + std::to_string(compressed) +
             " but size " + std::to_string(uncompressed));
      }
      e.size = compressed;
      entries.push_back(std::move(e));
      at += length;
    }
    if (at != dir.size) fail("the central directory has bytes after its last entry");
    return entries;
  }

  // The zip64 extended information field (id 1) holds, in this order, those of the sizes, the
  // local header offset and the disk whose 32-bit (16-bit) fields are saturated.
  void read_zip64_extra(const std::string& name, const unsigned char* p, uint64_t length,
                        uint64_t* uncompressed, uint64_t* compressed, uint64_t* offset,
                        uint64_t* disk) const {
    for (uint64_t at = 0; at + 4 <= length;) {
      const uint64_t id = read_le(p + at, 2), size = read_le(p + at + 2, 2);
      if (size > length - at - 4) fail("entry '" + name + "' has a truncated extra field");
      if (id == 1) {
        uint64_t field = at + 4;
        const uint64_t field_end = field + size;
        for (auto [value, saturated, bytes] :
             {std::tuple<uint64_t*, uint64_t, int>{uncompressed, 0xffffffff, 8},
              {compressed, 0xffffffff, 8},
              {offset, 0xffffffff, 8},
              {disk, 0xffff, 4}}) {
          if (*value != saturated) continue;
          if (field_end - field < static_cast<uint64_t>(bytes)) {
            fail("entry '" + name + "' has a short zip64 extra field");
          }
          *value = read_le(p + field, bytes);
          field += bytes;
        }
        return;
      }
      at += 4 + size;
    }
  }

  void check_name(const std::string& name) const {
    const std::string shown = name.substr(0, 64);
    if (name.empty()) fail("an entry has an empty name");
    if (name.front() == '/') fail("entry '" + shown + "' has an absolute name");
    for (const char c : name) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') {
        fail("entry name '" + shown + "' holds a control byte or a backslash");
      }
    }
    if (name == ".." || name.rfind("../", 0) == 0 || name.find("/../") != std::string::npos ||
        (name.size() >= 3 && name.compare(name.size() - 3, 3, "/..") == 0)) {
      fail("entry '" + shown + "' has a '..' component");
    }
  }

  // The entry's local header and data lie before the central directory, and the local header
  // names the same entry; returns the byte after its data.
  uint64_t check_local(const ZipEntry& e, uint64_t directory_offset) const {
    const std::string where = "entry '" + e.name + "'";
    if (e.local_offset > directory_offset ||
        directory_offset - e.local_offset < kLocalHeaderSize + e.name.size()) {
      fail(where + ": its local header at byte " + std::to_string(e.local_offset) +
           " lies outside the archive's data");
    }
    unsigned char header[kLocalHeaderSize];
    file_.read(e.local_offset, header, kLocalHeaderSize, "the local header of " + where);
    std::string name(read_le(header + 26, 2), '\0');
    const uint64_t extra_length = read_le(header + 28, 2);
    if (read_le(header, 4) != kLocalHeaderSignature || name.size() != e.name.size()) {
      fail(where + ": no local header matching it at byte " + std::to_string(e.local_offset));
    }
    file_.read(e.local_offset + kLocalHeaderSize, name.data(), name.size(), where + "'s name");
    if (name != e.name) fail(where + ": its local header names '" + name.substr(0, 64) + "'");
    const uint64_t data = e.local_offset + kLocalHeaderSize + name.size() + extra_length;
    if (data > directory_offset || e.size > directory_offset - data) {
      fail(where + ": its " + std::to_string(e.size) + " bytes at byte " + std::to_string(data) +
           " run past the archive's data (" + std::to_string(directory_offset) + " bytes)");
    }
    return data + e.size;
  }

  BinaryFile file_;
  std::string source_;
};

// c10::Error messages carry a multi-line backtrace; keep the first line.
std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

}  // namespace

void check_zip_directory(const std::filesystem::path& path) {
  ZipChecker(path).check();
}

std::vector<PthTensorRecord> parse_torch_pickle(const std::string& pickle,
                                                const std::string& source) {
  PickleMachine machine(pickle, source);
  const ValuePtr root = machine.run();
  if (root->kind != Kind::kDict) {
    throw InputError(source + ": the pickle holds a " + kind_name(root->kind) +
                     ", expected a state dict {name: tensor}");
  }
  std::vector<PthTensorRecord> records;
  std::unordered_set<std::string> seen;
  for (const auto& [key, value] : root->entries) {
    if (key->kind != Kind::kString) {
      throw InputError(source + ": state dict key is a " + kind_name(key->kind) + ", not a str");
    }
    if (value->kind != Kind::kTensor) {
      throw InputError(source + ": state dict entry '" + key->text + "' is a " +
                       kind_name(value->kind) + ", not a tensor (llt reads flat state dicts)");
    }
    if (!seen.insert(key->text).second) {
      throw InputError(source + ": state dict key '" + key->text + "' appears twice");
    }
    records.push_back(value->tensor);
    records.back().name = key->text;
  }
  return records;
}

PthFile::PthFile(const std::filesystem::path& path) : path_(path) {
  const std::string source = path.string();
  std::string pickle;
  check_zip_directory(path);
  try {
    reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(source);
    if (!reader_->hasRecord("data.pkl")) {
      throw InputError(source + ": zip archive has no data.pkl; not written by torch.save?");
    }
    const auto [data, size] = reader_->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
    if (reader_->hasRecord("byteorder")) {  // written by torch >= 2.1
      const auto [order, order_size] = reader_->getRecord("byteorder");
      const std::string byteorder(static_cast<const char*>(order.get()), order_size);
      if (byteorder != "little") {
        throw InputError(source + ": byteorder '" + byteorder + "' is not supported (little only)");
      }
    }
  } catch (const c10::Error& e) {
    throw InputError(source + ": not a readable torch.save zip archive (" +
                     first_line(e.what_without_backtrace()) + ")");
  }
  records_ = parse_torch_pickle(pickle, source + " data.pkl");
  for (size_t i = 0; i < records_.size(); ++i) {
    index_[records_[i].name] = i;
    tensors_.push_back(TensorInfo{records_[i].name, records_[i].dtype, records_[i].sizes});
  }
}

PthFile::~PthFile() = default;

const TensorInfo* PthFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor PthFile::read(const std::string& name) {
  const auto it = index_.find(name);
  if (it == index_.end()) throw InputError(path_.string() + ": no tensor '" + name + "'");
  const PthTensorRecord& record = records_[it->second];
  const auto options = at::TensorOptions().dtype(record.dtype);
  const std::string record_name = "data/" + record.storage_key;
  const std::string where = path_.string() + ": tensor '" + name + "' (record " + record_name + ")";
  at::DataPtr data;
  size_t size = 0;
  try {
    if (!reader_->hasRecord(record_name)) throw InputError(where + " is missing from the archive");
    std::tie(data, size) = reader_->getRecord(record_name);
  } catch (const c10::Error& e) {
    throw InputError(where + " cannot be read: " + first_line(e.what_without_backtrace()));
  }
  const size_t element = c10::elementSize(record.dtype);
  if (size / element < static_cast<size_t>(record.storage_numel)) {
    throw InputError(where + " holds " + std::to_string(size) + " bytes, its storage needs " +
                     std::to_string(record.storage_numel * element));
  }
  if (record.storage_numel == 0) return at::empty(record.sizes, options);
  // The tensor views the record's buffer, which lives as long as the tensor.
  auto holder = std::make_shared<at::DataPtr>(std::move(data));
  char* base = static_cast<char*>(holder->get()) + record.storage_offset * element;
  return at::from_blob(
      base, record.sizes, record.strides, [holder](void*) {}, options);
}

}  // namespace llt
