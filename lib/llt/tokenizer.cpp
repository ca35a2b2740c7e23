#include "llt/tokenizer.h"

#include <cstdlib>
#include <system_error>

#include <dlfcn.h>

#include "llt/errors.h"
#include "llt/sha256.h"
#include "llt/spm_shim.h"  // declarations only: the functions are looked up with dlsym

namespace llt {
namespace fs = std::filesystem;

namespace {

constexpr const char* kShimName = "libllt_spm.so";
constexpr size_t kErrorBytes = 1024;

// The shim's functions, resolved once per process (see shim()).
struct ShimApi {
  fs::path path;
  decltype(&llt_spm_load) load;
  decltype(&llt_spm_free) free;
  decltype(&llt_spm_encode) encode;
  decltype(&llt_spm_decode) decode;
  decltype(&llt_spm_id_to_piece) id_to_piece;
  decltype(&llt_spm_piece_to_id) piece_to_id;
  decltype(&llt_spm_vocab_size) vocab_size;
  decltype(&llt_spm_bos_id) bos_id;
  decltype(&llt_spm_eos_id) eos_id;
  decltype(&llt_spm_unk_id) unk_id;
  decltype(&llt_spm_pad_id) pad_id;
  decltype(&llt_spm_free_buffer) free_buffer;
};

// Where to look for the shim, in order (tokenizer.h). $LLT_SPM_SHIM, when set, is the only one.
std::vector<fs::path> shim_candidates() {
  const char* env = std::getenv("LLT_SPM_SHIM");
  if (env != nullptr && *env != '\0') return {fs::path(env)};
  std::vector<fs::path> candidates;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / kShimName);
    candidates.push_back(exe.parent_path().parent_path() / "lib" / "llt" / kShimName);
  }
#ifdef LLT_SPM_SHIM_BUILD_PATH
  candidates.push_back(fs::path(LLT_SPM_SHIM_BUILD_PATH));
#endif
  return candidates;
}

template <typename Fn>
void resolve(void* handle, const char* name, Fn* fn, std::string* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*fn == nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
}

// dlopen()s one candidate; returns an empty string on success, else why it failed.
std::string try_open(const fs::path& path, ShimApi* api) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return "not found";
  // RTLD_LOCAL keeps SentencePiece's bundled protobuf out of the global scope; RTLD_DEEPBIND
  // makes the shim and libsentencepiece resolve their own symbols before libtorch's protobuf.
  // (RTLD_DEEPBIND does not work under AddressSanitizer: run the tokenizer without ASan.)
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (handle == nullptr) {
    const char* reason = dlerror();
    return reason != nullptr ? reason : "dlopen failed";
  }
  auto version =
      reinterpret_cast<decltype(&llt_spm_abi_version)>(dlsym(handle, "llt_spm_abi_version"));
  if (version == nullptr || version() != LLT_SPM_ABI_VERSION) {
    dlclose(handle);
    return "not an llt_spm shim of ABI version " + std::to_string(LLT_SPM_ABI_VERSION) +
           " (a stale build?)";
  }
  std::string missing;
  resolve(handle, "llt_spm_load", &api->load, &missing);
  resolve(handle, "llt_spm_free", &api->free, &missing);
  resolve(handle, "llt_spm_encode", &api->encode, &missing);
  resolve(handle, "llt_spm_decode", &api->decode, &missing);
  resolve(handle, "llt_spm_id_to_piece", &api->id_to_piece, &missing);
  resolve(handle, "llt_spm_piece_to_id", &api->piece_to_id, &missing);
  resolve(handle, "llt_spm_vocab_size", &api->vocab_size, &missing);
  resolve(handle, "llt_spm_bos_id", &api->bos_id, &missing);
  resolve(handle, "llt_spm_eos_id", &api->eos_id, &missing);
  resolve(handle, "llt_spm_unk_id", &api->unk_id, &missing);
  resolve(handle, "llt_spm_pad_id", &api->pad_id, &missing);
  resolve(handle, "llt_spm_free_buffer", &api->free_buffer, &missing);
  if (!missing.empty()) {
    dlclose(handle);
    return "missing symbols: " + missing;
  }
  api->path = path;
  return "";  // the handle stays open for the life of the process
}

ShimApi* open_shim() {
  auto api = std::make_unique<ShimApi>();
  std::string tried;
  for (const fs::path& candidate : shim_candidates()) {
    const std::string failure = try_open(candidate, api.get());
    if (failure.empty()) return api.release();
    tried += (tried.empty() ? "" : "; ") + candidate.string() + " (" + failure + ")";
  }
  throw RuntimeError(std::string("cannot load the SentencePiece shim ") + kShimName +
                     "; tried: " + tried + ". Build the llt_spm target or set LLT_SPM_SHIM");
}

// The shim, loaded on first use. Deliberately never freed or dlclose()d, so tokenizers held in
// static objects stay usable during exit. A failed load throws and is retried on the next call.
const ShimApi& shim() {
  static const ShimApi* api = open_shim();
  return *api;
}

// A buffer the shim malloc'd, released through the shim.
struct ShimBufferDeleter {
  void operator()(void* buffer) const { shim().free_buffer(buffer); }
};
template <typename T>
using ShimBuffer = std::unique_ptr<T, ShimBufferDeleter>;

}  // namespace

struct Tokenizer::Model {
  explicit Model(LltSpm* h) : handle(h) {}
  ~Model() { shim().free(handle); }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  LltSpm* handle;
};

fs::path Tokenizer::shim_path() {
  return shim().path;
}

Tokenizer Tokenizer::load(const fs::path& model) {
  std::error_code ec;
  if (!fs::exists(model, ec)) {
    throw InputError(model.string() + ": no such file (expected a SentencePiece tokenizer .model)");
  }
  if (!fs::is_regular_file(model, ec)) {
    throw InputError(model.string() + ": expected a SentencePiece tokenizer .model file, found " +
                     "a directory or special file");
  }
  const ShimApi& api = shim();
  Tokenizer tok;
  tok.path_ = model;
  tok.sha256_ = sha256_file(model);
  char err[kErrorBytes] = {};
  LltSpm* handle = api.load(model.c_str(), err, sizeof(err));
  if (handle == nullptr) {
    throw InputError(model.string() + ": not a SentencePiece model (sentencepiece says: " + err +
                     ")");
  }
  tok.model_ = std::make_shared<const Model>(handle);
  tok.vocab_size_ = api.vocab_size(handle);
  tok.bos_id_ = api.bos_id(handle);
  tok.eos_id_ = api.eos_id(handle);
  tok.pad_id_ = api.pad_id(handle);
  tok.unk_id_ = api.unk_id(handle);
  if (tok.vocab_size_ <= 0) {
    throw InputError(model.string() + ": SentencePiece model has an empty vocabulary");
  }
  return tok;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  if ((bos && bos_id_ < 0) || (eos && eos_id_ < 0)) {
    throw InputError(path_.string() +
                     ": BOS/EOS requested but the tokenizer defines none (bos_id " +
                     std::to_string(bos_id_) + ", eos_id " + std::to_string(eos_id_) + ")");
  }
  int32_t* raw = nullptr;
  size_t n = 0;
  char err[kErrorBytes] = {};
  check_shim(shim().encode(model_->handle, text.data(), text.size(), &raw, &n, err, sizeof(err)),
             "encode", "a text of " + std::to_string(text.size()) + " bytes", err);
  const ShimBuffer<int32_t> ids(raw);
  std::vector<int32_t> out;
  out.reserve(n + 2);
  if (bos) out.push_back(bos_id_);
  out.insert(out.end(), raw, raw + n);
  if (eos) out.push_back(eos_id_);
  return out;
}

void Tokenizer::check_shim(int status, const char* what, const std::string& input,
                           const char* err) const {
  if (status == 0) return;
  if (status == LLT_SPM_OUT_OF_MEMORY) {
    // The model is fine: the host ran out of memory for this input (issue 15, item 8).
    throw OutOfMemoryError("out of host memory in SentencePiece " + std::string(what) + " of " +
                           input + " (tokenizer " + path_.string() + ")");
  }
  throw RuntimeError(path_.string() + ": SentencePiece " + what + " failed: " + err);
}

void Tokenizer::check_id(int32_t id, const char* what) const {
  if (id < 0 || id >= vocab_size_) {
    throw InputError(path_.string() + ": " + what + ": id " + std::to_string(id) +
                     " is outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
  }
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (const int32_t id : ids) check_id(id, "decode");
  char* raw = nullptr;
  size_t n = 0;
  char err[kErrorBytes] = {};
  check_shim(shim().decode(model_->handle, ids.data(), ids.size(), &raw, &n, err, sizeof(err)),
             "decode", std::to_string(ids.size()) + " ids", err);
  const ShimBuffer<char> text(raw);
  return std::string(raw, n);
}

std::string Tokenizer::piece(int32_t id) const {
  check_id(id, "piece");
  char* raw = nullptr;
  size_t n = 0;
  char err[kErrorBytes] = {};
  check_shim(shim().id_to_piece(model_->handle, id, &raw, &n, err, sizeof(err)), "id_to_piece",
             "id " + std::to_string(id), err);
  const ShimBuffer<char> text(raw);
  return std::string(raw, n);
}

int32_t Tokenizer::piece_to_id(const std::string& piece) const {
  return shim().piece_to_id(model_->handle, piece.data(), piece.size());
}

}  // namespace llt
