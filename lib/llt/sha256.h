// SHA-256 (FIPS 180-4) of byte strings and files, as lowercase hex. Used to tie shards and runs
// to the exact tokenizer, data and model files they came from.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace llt {

// Incremental hasher: update() any number of times, then hex_digest() once.
class Sha256 {
 public:
  Sha256();

  // Appends bytes to the message.
  void update(const void* data, size_t size);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }

  // Finishes the message and returns the 32-byte digest. Throws RuntimeError if called twice.
  std::array<uint8_t, 32> digest();

  // digest() as 64 lowercase hex characters.
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);  // one 64-byte block into state_

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;  // the current partial block
  size_t buffer_size_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

// Hex SHA-256 of a byte string.
std::string sha256_hex(std::string_view bytes);

// Hex SHA-256 of a file's bytes, read in chunks (constant memory for any file size).
// Throws InputError if the file is missing or cannot be opened, RuntimeError on a read error.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace llt
