// The C API of libllt_spm.so, the one place in llt that links SentencePiece.
//
// Why a separate library: Debian's libsentencepiece bundles protobuf 3.14 and exports its symbols,
// while libtorch links the system libprotobuf 3.21. Both in one link map crash during static
// initialisation, before main(). llt::Tokenizer (tokenizer.cpp) dlopen()s this shim with
// RTLD_LOCAL | RTLD_DEEPBIND, so SentencePiece binds to its own protobuf and nothing else sees it.
// Only the functions below are exported; nothing here includes SentencePiece or torch headers.
//
// Conventions: strings are (pointer, byte length) pairs, UTF-8, not NUL-terminated. Fallible
// functions return 0 on success, LLT_SPM_OUT_OF_MEMORY when an allocation failed (std::bad_alloc
// inside SentencePiece, or malloc) and -1 on any other failure, writing a NUL-terminated message
// into the caller's `err` buffer (truncated to err_size). Buffers the shim returns (ids, text) are
// malloc'd and the caller releases them with llt_spm_free_buffer.
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(LLT_SPM_BUILDING)
#define LLT_SPM_API __attribute__((visibility("default")))
#else
#define LLT_SPM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature below changes; the loader refuses a shim with another version.
#define LLT_SPM_ABI_VERSION 2

// The return code of a fallible function whose allocation failed (host memory).
#define LLT_SPM_OUT_OF_MEMORY (-2)

typedef struct LltSpm LltSpm;  // an opaque loaded SentencePiece model

LLT_SPM_API int llt_spm_abi_version(void);

// Loads a SentencePiece model file. Returns NULL and fills `err` if it cannot be read or parsed.
LLT_SPM_API LltSpm* llt_spm_load(const char* path, char* err, size_t err_size);
LLT_SPM_API void llt_spm_free(LltSpm* model);

// Encodes text to ids (no BOS/EOS). On success *ids is a malloc'd array of *n_ids ids
// (NULL when *n_ids is 0).
LLT_SPM_API int llt_spm_encode(const LltSpm* model, const char* text, size_t text_len,
                               int32_t** ids, size_t* n_ids, char* err, size_t err_size);

// Decodes ids to text. On success *text is a malloc'd buffer of *text_len bytes plus a NUL.
// Fails on an id outside [0, vocab_size).
LLT_SPM_API int llt_spm_decode(const LltSpm* model, const int32_t* ids, size_t n_ids, char** text,
                               size_t* text_len, char* err, size_t err_size);

// The piece string of an id, malloc'd as in llt_spm_decode. Fails on an id out of range.
LLT_SPM_API int llt_spm_id_to_piece(const LltSpm* model, int32_t id, char** piece,
                                    size_t* piece_len, char* err, size_t err_size);

// The id of a piece string; unk_id for a string that is not a piece (SentencePiece's rule),
// -1 on an internal failure (out of memory).
LLT_SPM_API int32_t llt_spm_piece_to_id(const LltSpm* model, const char* piece, size_t piece_len);

LLT_SPM_API int32_t llt_spm_vocab_size(const LltSpm* model);
LLT_SPM_API int32_t llt_spm_bos_id(const LltSpm* model);  // -1 when the model has none
LLT_SPM_API int32_t llt_spm_eos_id(const LltSpm* model);  // -1 when the model has none
LLT_SPM_API int32_t llt_spm_unk_id(const LltSpm* model);
LLT_SPM_API int32_t llt_spm_pad_id(const LltSpm* model);  // -1 when the model has none

// Releases a buffer returned by llt_spm_encode/decode/id_to_piece. NULL is a no-op.
LLT_SPM_API void llt_spm_free_buffer(void* buffer);

#ifdef __cplusplus
}  // extern "C"
#endif
