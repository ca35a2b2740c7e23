// SHA-256 against published vectors (FIPS 180-2 appendix B / NIST CAVP examples) and Python's
// hashlib for the padding-boundary lengths and the shipped files.
#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "llt/errors.h"
#include "llt/sha256.h"

namespace {

const std::filesystem::path kSourceDir = LLT_SOURCE_DIR;

TEST(Sha256, PublishedVectors) {
  EXPECT_EQ(llt::sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(llt::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(llt::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(llt::sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                            "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

// One million 'a', fed in uneven chunks so updates straddle block boundaries.
TEST(Sha256, MillionAInUnevenChunks) {
  llt::Sha256 hasher;
  const std::string chunk(1000, 'a');
  size_t fed = 0;
  const size_t sizes[] = {1, 7, 63, 64, 65, 1000, 129};
  for (size_t i = 0; fed < 1000000; ++i) {
    const size_t n = std::min(sizes[i % 7], 1000000 - fed);
    hasher.update(chunk.data(), n);
    fed += n;
  }
  EXPECT_EQ(hasher.hex_digest(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Lengths around the 55/56/64-byte padding boundaries (values from Python's hashlib), hashed
// in one call and byte by byte.
TEST(Sha256, PaddingBoundaries) {
  const std::vector<std::pair<size_t, std::string>> cases = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {57, "f13b2d724659eb3bf47f2dd6af1accc87b81f09f59f2b75e5c0bed6589dfe8c6"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
  };
  for (const auto& [length, expected] : cases) {
    EXPECT_EQ(llt::sha256_hex(std::string(length, 'a')), expected) << "length " << length;
    llt::Sha256 hasher;
    for (size_t i = 0; i < length; ++i) hasher.update("a", 1);
    EXPECT_EQ(hasher.hex_digest(), expected) << "length " << length << ", byte by byte";
  }
}

TEST(Sha256, AllByteValues) {
  std::string bytes;
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (int b = 0; b < 256; ++b) bytes += static_cast<char>(b);
  }
  EXPECT_EQ(llt::sha256_hex(bytes),
            "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363");
}

TEST(Sha256, DigestTwiceThrows) {
  llt::Sha256 hasher;
  hasher.update("abc");
  hasher.hex_digest();
  EXPECT_THROW(hasher.digest(), llt::RuntimeError);
  EXPECT_THROW(hasher.update("x"), llt::RuntimeError);
}

// The LLaMA tokenizer's well-known checksum; stories260K.bin (1,056,540 bytes) is larger than
// one 1 MiB read chunk, so it checks the streaming path.
TEST(Sha256, KnownFiles) {
  EXPECT_EQ(llt::sha256_file(kSourceDir / "assets/tokenizers/llama2/tokenizer.model"),
            "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347");
  EXPECT_EQ(llt::sha256_file(kSourceDir / "assets/models/stories260K/stories260K.bin"),
            "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
}

TEST(Sha256, MissingFileOrDirectoryIsInputError) {
  EXPECT_THROW(llt::sha256_file(kSourceDir / "assets/no/such/file.bin"), llt::InputError);
  EXPECT_THROW(llt::sha256_file(kSourceDir / "assets"), llt::InputError);
}

}  // namespace
