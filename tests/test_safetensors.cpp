// safetensors reader and writer: round trip, a file written by Python (data_prep/
// make_checkpoint_fixtures.py writes it by hand with struct + json), and malformed headers.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "test_support.h"
#include "llt/errors.h"
#include "llt/safetensors.h"

namespace fs = std::filesystem;

namespace {

const fs::path kReference = fs::path(LLT_TEST_ASSETS) / "checkpoints" / "reference.safetensors";

using llt::testing::TempDir;

// The InputError message `f` throws; fails the test if it throws nothing.
template <class F>
std::string input_error(F f) {
  try {
    f();
  } catch (const llt::InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an llt::InputError";
  return "";
}

// A safetensors file from raw parts: u64 LE header length, header text, data bytes.
void write_raw(const fs::path& path, const std::string& header, const std::string& data,
               uint64_t header_length = UINT64_MAX) {
  if (header_length == UINT64_MAX) header_length = header.size();
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(header_length >> (8 * i)));
  out << header << data;
}

}  // namespace

TEST(Safetensors, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  TempDir dir;
  const auto g = at::detail::createCPUGenerator(7);
  const llt::NamedTensors tensors = {
      {"f32", at::randn({3, 5}, g)},
      {"f16", at::randn({4}, g).to(at::kHalf)},
      {"bf16", at::randn({2, 3, 2}, g).to(at::kBFloat16)},
      {"i32", at::arange(6, at::kInt).view({2, 3})},
      {"i64", at::arange(-3, 3, at::kLong)},
      {"transposed", at::randn({3, 4}, g).t()},  // non-contiguous: written by value
      {"empty", at::empty({0, 3})},
      {"scalar", at::full({}, 2.5)},
  };
  const fs::path path = dir.path / "out.safetensors";
  llt::write_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));

  llt::SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  EXPECT_EQ(file.metadata().at("note"), "round trip");
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_NE(file.find(name), nullptr);
    EXPECT_EQ(file.find(name)->dtype, expected.scalar_type());
    const at::Tensor got = file.read(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(at::equal(got, expected));
  }
  // Tensors' bytes do not overlap and the data section starts 8-byte aligned.
  const auto [begin, end] = file.byte_range("f32");
  EXPECT_EQ(begin % 8, 0u);
  EXPECT_EQ(end - begin, 15u * 4u);
}

TEST(Safetensors, ReadsTheFileWrittenByPython) {
  llt::SafetensorsFile file(kReference);
  EXPECT_EQ(file.metadata().at("source"), "data_prep/make_checkpoint_fixtures.py");
  const at::Tensor tokens = file.read("golden.tokens");
  EXPECT_TRUE(at::equal(tokens, at::tensor({1, 5, 17, 42, 8, 63, 0, 29}, at::kLong)));
  const llt::TensorInfo* wk = file.find("layers.0.attention.wk.weight");
  ASSERT_NE(wk, nullptr);
  EXPECT_EQ(wk->dtype, at::kFloat);
  EXPECT_EQ(wk->shape, (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(file.find("no.such.tensor"), nullptr);
  EXPECT_NE(input_error([&] { file.read("no.such.tensor"); }).find("no.such.tensor"),
            std::string::npos);
}

TEST(Safetensors, MalformedFilesAreInputErrorsNamingTheFile) {
  TempDir dir;
  const fs::path path = dir.path / "bad.safetensors";
  const std::string entry = R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  const std::string data(16, '\0');
  auto error_for = [&](const std::string& header, const std::string& bytes,
                       uint64_t length = UINT64_MAX) {
    write_raw(path, header, bytes, length);
    return input_error([&] { llt::SafetensorsFile file(path); });
  };
  write_raw(path, entry, data);
  EXPECT_NO_THROW(llt::SafetensorsFile file(path));  // the well-formed baseline

  struct Case {
    const char* what;
    std::string message;
    const char* expect;
  };
  const Case cases[] = {
      {"header length beyond the file", error_for(entry, data, 1000), "exceeds the file size"},
      {"bad JSON", error_for(R"({"t":{"dtype":)", data), "not valid JSON"},
      {"offsets past the data", error_for(entry, data.substr(0, 12)), "outside the data section"},
      {"offsets reversed",
       error_for(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data), "outside"},
      {"size does not match the shape",
       error_for(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data), "needs 12"},
      {"unknown dtype",
       error_for(R"({"t":{"dtype":"F8_E4M3","shape":[16],"data_offsets":[0,16]}})", data),
       "unsupported dtype"},
      {"negative size",
       error_for(R"({"t":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data),
       "non-negative"},
      {"missing field", error_for(R"({"t":{"dtype":"F32","shape":[4]}})", data), "data_offsets"},
      {"metadata not strings", error_for(R"({"__metadata__":{"a":1}})", ""), "not a string"},
      {"not an object", error_for("[1, 2]", ""), "not a JSON object"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_NE(c.message.find(path.string()), std::string::npos) << c.message;
    EXPECT_NE(c.message.find(c.expect), std::string::npos) << c.message;
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "abc";
  EXPECT_NE(input_error([&] { llt::SafetensorsFile file(path); }).find("too short"),
            std::string::npos);
}

TEST(Safetensors, TruncatingThePythonFileIsAnInputError) {
  TempDir dir;
  const fs::path path = dir.path / "reference.safetensors";
  const auto size = fs::file_size(kReference);
  for (const uint64_t keep : {uint64_t{4}, uint64_t{9}, uint64_t{200}, size / 2, size - 1}) {
    SCOPED_TRACE(keep);
    fs::copy_file(kReference, path, fs::copy_options::overwrite_existing);
    fs::resize_file(path, keep);
    EXPECT_NE(input_error([&] { llt::SafetensorsFile file(path); }).find(path.string()),
              std::string::npos);
  }
}

TEST(Safetensors, WriterRejectsBadInputAndReportsIoErrors) {
  TempDir dir;
  const fs::path path = dir.path / "w.safetensors";
  const at::Tensor t = at::zeros({2});
  EXPECT_NE(input_error([&] {
              llt::write_safetensors(path, {{"a", t}, {"a", t}});
            }).find("duplicate"),
            std::string::npos);
  EXPECT_NE(input_error([&] {
              llt::write_safetensors(path, {{"c", at::zeros({2}, at::kComplexFloat)}});
            }).find("'c'"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_THROW(llt::write_safetensors(dir.path / "no" / "dir.safetensors", {{"a", t}}),
               llt::RuntimeError);
}
