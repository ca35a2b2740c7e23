// libllt_spm.so: SentencePiece behind a small C API (see spm_shim.h for why). Built with hidden
// visibility; no exception crosses the C boundary.
#include "llt/spm_shim.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include <sentencepiece_processor.h>

struct LltSpm {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {

void write_error(char* err, size_t err_size, const std::string& message) {
  if (err == nullptr || err_size == 0) return;
  const size_t n = std::min(message.size(), err_size - 1);
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

// Copies bytes into a malloc'd buffer with a trailing NUL, for the caller to free.
int copy_out(std::string_view bytes, char** out, size_t* out_len, char* err, size_t err_size) {
  char* buffer = static_cast<char*>(std::malloc(bytes.size() + 1));
  if (buffer == nullptr) {
    write_error(err, err_size, "out of memory");
    return LLT_SPM_OUT_OF_MEMORY;
  }
  std::memcpy(buffer, bytes.data(), bytes.size());
  buffer[bytes.size()] = '\0';
  *out = buffer;
  *out_len = bytes.size();
  return 0;
}

bool id_in_range(const LltSpm* model, int32_t id) {
  return id >= 0 && id < model->processor.GetPieceSize();
}

std::string out_of_range_message(const LltSpm* model, int32_t id) {
  return "id " + std::to_string(id) + " is outside the vocabulary [0, " +
         std::to_string(model->processor.GetPieceSize()) + ")";
}

}  // namespace

extern "C" {

int llt_spm_abi_version(void) {
  return LLT_SPM_ABI_VERSION;
}

LltSpm* llt_spm_load(const char* path, char* err, size_t err_size) {
  try {
    auto* model = new LltSpm();
    const auto status = model->processor.Load(path);
    if (!status.ok()) {
      write_error(err, err_size, status.ToString());
      delete model;
      return nullptr;
    }
    return model;
  } catch (const std::exception& e) {
    write_error(err, err_size, e.what());
    return nullptr;
  }
}

void llt_spm_free(LltSpm* model) {
  delete model;
}

int llt_spm_encode(const LltSpm* model, const char* text, size_t text_len, int32_t** ids,
                   size_t* n_ids, char* err, size_t err_size) {
  try {
    std::vector<int> encoded;
    const auto status = model->processor.Encode(std::string_view(text, text_len), &encoded);
    if (!status.ok()) {
      write_error(err, err_size, status.ToString());
      return -1;
    }
    *ids = nullptr;
    *n_ids = encoded.size();
    if (encoded.empty()) return 0;
    *ids = static_cast<int32_t*>(std::malloc(encoded.size() * sizeof(int32_t)));
    if (*ids == nullptr) {
      write_error(err, err_size, "out of memory");
      return LLT_SPM_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < encoded.size(); ++i) (*ids)[i] = static_cast<int32_t>(encoded[i]);
    return 0;
  } catch (const std::bad_alloc&) {
    write_error(err, err_size, "out of memory");
    return LLT_SPM_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    write_error(err, err_size, e.what());
    return -1;
  }
}

int llt_spm_decode(const LltSpm* model, const int32_t* ids, size_t n_ids, char** text,
                   size_t* text_len, char* err, size_t err_size) {
  try {
    std::vector<int> input(ids, ids + n_ids);
    for (const int id : input) {
      if (!id_in_range(model, id)) {
        write_error(err, err_size, out_of_range_message(model, id));
        return -1;
      }
    }
    std::string decoded;
    const auto status = model->processor.Decode(input, &decoded);
    if (!status.ok()) {
      write_error(err, err_size, status.ToString());
      return -1;
    }
    return copy_out(decoded, text, text_len, err, err_size);
  } catch (const std::bad_alloc&) {
    write_error(err, err_size, "out of memory");
    return LLT_SPM_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    write_error(err, err_size, e.what());
    return -1;
  }
}

int llt_spm_id_to_piece(const LltSpm* model, int32_t id, char** piece, size_t* piece_len, char* err,
                        size_t err_size) {
  try {
    // SentencePiece's IdToPiece does not check the range itself.
    if (!id_in_range(model, id)) {
      write_error(err, err_size, out_of_range_message(model, id));
      return -1;
    }
    return copy_out(model->processor.IdToPiece(id), piece, piece_len, err, err_size);
  } catch (const std::bad_alloc&) {
    write_error(err, err_size, "out of memory");
    return LLT_SPM_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    write_error(err, err_size, e.what());
    return -1;
  }
}

int32_t llt_spm_piece_to_id(const LltSpm* model, const char* piece, size_t piece_len) {
  try {
    return model->processor.PieceToId(std::string_view(piece, piece_len));
  } catch (const std::exception&) {
    return -1;
  }
}

int32_t llt_spm_vocab_size(const LltSpm* model) {
  return model->processor.GetPieceSize();
}
int32_t llt_spm_bos_id(const LltSpm* model) {
  return model->processor.bos_id();
}
int32_t llt_spm_eos_id(const LltSpm* model) {
  return model->processor.eos_id();
}
int32_t llt_spm_unk_id(const LltSpm* model) {
  return model->processor.unk_id();
}
int32_t llt_spm_pad_id(const LltSpm* model) {
  return model->processor.pad_id();
}

void llt_spm_free_buffer(void* buffer) {
  std::free(buffer);
}

}  // extern "C"
