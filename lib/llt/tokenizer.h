// A SentencePiece tokenizer (LLaMA-2's, or llama2.c's tok512) behind an isolation boundary.
//
// SentencePiece itself lives in the shim libllt_spm.so (spm_shim.h says why), which this class
// dlopen()s once per process. The shim is found at, in order: $LLT_SPM_SHIM if set (and only
// there); libllt_spm.so beside the running executable; <exe dir>/../lib/llt/libllt_spm.so (the
// install layout); the build tree's copy. No SentencePiece or torch header is included here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace llt {

class Tokenizer {
 public:
  // Loads a SentencePiece model file and hashes its bytes. Throws InputError naming the file if
  // it is missing or not a SentencePiece model, RuntimeError if the shim cannot be loaded.
  static Tokenizer load(const std::filesystem::path& model);

  // Text -> ids, with BOS/EOS prepended/appended on request. Throws InputError if a requested
  // BOS/EOS does not exist in this model (id -1), OutOfMemoryError if SentencePiece runs out of
  // host memory, RuntimeError if it fails otherwise.
  // Thread-safe: several threads may encode with one Tokenizer (SentencePiece's Encode is const;
  // tests/test_tokenize.cpp checks it).
  std::vector<int32_t> encode(const std::string& text, bool bos, bool eos) const;

  // Ids -> text (SentencePiece drops control pieces such as BOS/EOS). Throws InputError on an id
  // outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t vocab_size() const { return vocab_size_; }
  int32_t bos_id() const { return bos_id_; }  // -1 when the model has none
  int32_t eos_id() const { return eos_id_; }  // -1 when the model has none
  int32_t pad_id() const { return pad_id_; }  // -1 when the model has none (LLaMA-2)
  int32_t unk_id() const { return unk_id_; }

  // The piece string of an id (e.g. "▁the", "<0x0A>"). Throws InputError on an id out of range.
  std::string piece(int32_t id) const;

  // The id of a piece string; unk_id() for a string that is not a piece.
  int32_t piece_to_id(const std::string& piece) const;

  // Lowercase hex SHA-256 of the model file's bytes (recorded in shards and runs).
  const std::string& sha256() const { return sha256_; }

  // The model file this tokenizer was loaded from.
  const std::filesystem::path& path() const { return path_; }

  // The shim library this process loaded (loading it on first use). Throws RuntimeError naming
  // every path tried if none loads.
  static std::filesystem::path shim_path();

 private:
  struct Model;  // the shim's handle; shared so a Tokenizer is cheap to copy

  Tokenizer() = default;
  void check_id(int32_t id, const char* what) const;
  // Maps a shim return code to an exception: OutOfMemoryError for LLT_SPM_OUT_OF_MEMORY,
  // RuntimeError with the shim's message `err` otherwise.
  void check_shim(int status, const char* what, const std::string& input, const char* err) const;

  std::shared_ptr<const Model> model_;
  std::filesystem::path path_;
  std::string sha256_;
  int32_t vocab_size_ = 0;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
  int32_t unk_id_ = -1;
};

}  // namespace llt
