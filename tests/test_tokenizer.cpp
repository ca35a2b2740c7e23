// llt::Tokenizer against goldens from Python's SentencePiece (tests/assets/tokenizer/README.md),
// its error paths, and the isolation boundary: libtorch and SentencePiece in one process.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kSourceDir = LLT_SOURCE_DIR;
const fs::path kLlama2 = kSourceDir / "assets/tokenizers/llama2/tokenizer.model";
const fs::path kTok512 = kSourceDir / "assets/models/stories260K/tok512.model";

json read_goldens() {
  std::ifstream in(fs::path(LLT_TEST_ASSETS) / "tokenizer/goldens.json");
  EXPECT_TRUE(in.good()) << "missing tests/assets/tokenizer/goldens.json";
  return json::parse(in);
}

// Runs `body` and checks it throws InputError whose message contains `needle`.
template <typename Fn>
void expect_input_error(Fn body, const std::string& needle) {
  try {
    body();
    ADD_FAILURE() << "expected llt::InputError mentioning '" << needle << "'";
  } catch (const llt::InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, MatchesPythonGoldens) {
  const json goldens = read_goldens();
  ASSERT_EQ(goldens["tokenizers"].size(), 2u);
  for (const json& g : goldens["tokenizers"]) {
    SCOPED_TRACE(g["name"].get<std::string>());
    const auto tok = llt::Tokenizer::load(kSourceDir / g["model"].get<std::string>());
    EXPECT_EQ(tok.sha256(), g["sha256"].get<std::string>());
    EXPECT_EQ(tok.vocab_size(), g["vocab_size"].get<int32_t>());
    EXPECT_EQ(tok.bos_id(), g["bos_id"].get<int32_t>());
    EXPECT_EQ(tok.eos_id(), g["eos_id"].get<int32_t>());
    EXPECT_EQ(tok.unk_id(), g["unk_id"].get<int32_t>());
    EXPECT_EQ(tok.pad_id(), g["pad_id"].get<int32_t>());
    ASSERT_GE(g["encode"].size(), 50u);
    for (const json& c : g["encode"]) {
      const auto text = c["text"].get<std::string>();
      const auto ids = tok.encode(text, /*bos=*/false, /*eos=*/false);
      EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "encode: " << json(text).dump();
      EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>()) << "decode of " << json(text);
    }
    for (const json& c : g["decode"]) {
      EXPECT_EQ(tok.decode(c["ids"].get<std::vector<int32_t>>()), c["text"].get<std::string>())
          << "decode: " << c["ids"].dump();
    }
    for (const json& c : g["pieces"]) {
      EXPECT_EQ(tok.piece(c["id"].get<int32_t>()), c["piece"].get<std::string>())
          << "piece " << c["id"];
    }
    for (const json& c : g["piece_to_id"]) {
      EXPECT_EQ(tok.piece_to_id(c["piece"].get<std::string>()), c["id"].get<int32_t>())
          << "piece_to_id " << c["piece"];
    }
  }
}

// Figures from shared/data/PROVENANCE.md (not from the goldens): LLaMA-2 is 32,000 pieces,
// unk 0, bos 1, eos 2, no pad; add_dummy_prefix turns "x" into [921] and " x" into [29871, 921].
TEST(Tokenizer, Llama2SpecialIdsAndBosEos) {
  const auto tok = llt::Tokenizer::load(kLlama2);
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.encode("x", false, false), (std::vector<int32_t>{921}));
  EXPECT_EQ(tok.encode("x", true, false), (std::vector<int32_t>{1, 921}));
  EXPECT_EQ(tok.encode("x", false, true), (std::vector<int32_t>{921, 2}));
  EXPECT_EQ(tok.encode(" x", true, true), (std::vector<int32_t>{1, 29871, 921, 2}));
  EXPECT_EQ(tok.encode("", true, true), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(tok.encode("\n", false, false), (std::vector<int32_t>{29871, 13}));
  EXPECT_EQ(tok.decode({1, 921, 2}), "x");
}

TEST(Tokenizer, Sha256OfModelFiles) {
  EXPECT_EQ(llt::Tokenizer::load(kLlama2).sha256(),
            "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347");
  EXPECT_EQ(llt::Tokenizer::load(kTok512).sha256(),
            "bf8e929680b960de8754465bb222aab0de883a668601245a7218914c6451370f");
}

TEST(Tokenizer, CopiesShareTheModel) {
  std::vector<int32_t> ids;
  {
    auto original = std::make_unique<llt::Tokenizer>(llt::Tokenizer::load(kTok512));
    const llt::Tokenizer copy = *original;
    original.reset();
    ids = copy.encode("Once upon a time", true, false);
    EXPECT_EQ(copy.decode(ids), "Once upon a time");
  }
  EXPECT_EQ(ids.front(), 1);
}

TEST(Tokenizer, MissingOrNonModelFileIsInputError) {
  const fs::path missing = kSourceDir / "assets/tokenizers/no-such/tokenizer.model";
  expect_input_error([&] { llt::Tokenizer::load(missing); }, missing.string());
  // A text file and a JSON file are not SentencePiece models.
  const fs::path readme = fs::path(LLT_TEST_ASSETS) / "tokenizer/README.md";
  expect_input_error([&] { llt::Tokenizer::load(readme); }, readme.string());
  const fs::path goldens = fs::path(LLT_TEST_ASSETS) / "tokenizer/goldens.json";
  expect_input_error([&] { llt::Tokenizer::load(goldens); }, goldens.string());
  // An empty file parses as an empty ModelProto; SentencePiece rejects it (no unk piece).
  const fs::path empty = fs::temp_directory_path() / "llt_test_tokenizer_empty.model";
  std::ofstream(empty).close();
  expect_input_error([&] { llt::Tokenizer::load(empty); }, empty.string());
  fs::remove(empty);
  const fs::path dir = kSourceDir / "assets/tokenizers/llama2";
  expect_input_error([&] { llt::Tokenizer::load(dir); }, dir.string());
}

TEST(Tokenizer, OutOfRangeIdIsInputError) {
  const auto tok = llt::Tokenizer::load(kLlama2);
  expect_input_error([&] { tok.decode({15043, 32000}); }, "id 32000");
  expect_input_error([&] { tok.decode({-1}); }, "id -1");
  expect_input_error([&] { tok.piece(32000); }, "[0, 32000)");
  expect_input_error([&] { tok.piece(-5); }, "id -5");
  const auto small = llt::Tokenizer::load(kTok512);
  expect_input_error([&] { small.decode({512}); }, "id 512");
  EXPECT_EQ(small.piece(511), "\u200a");  // the last valid id still works
}

// The reason for the shim: libtorch's protobuf 3.21 and libsentencepiece's bundled 3.14 crash at
// start-up when linked into one binary. This binary links libtorch (through llt); here both run.
TEST(Tokenizer, TorchAndTokenizerInOneProcess) {
  const at::Tensor x = at::arange(6, at::kFloat).reshape({2, 3});
  const at::Tensor y = at::matmul(x, x.t());  // (2, 2): [[5, 14], [14, 50]]
  EXPECT_FLOAT_EQ(y[1][1].item<float>(), 50.0f);

  const auto tok = llt::Tokenizer::load(kLlama2);
  const auto ids = tok.encode("I believe the meaning of life is", true, false);
  const at::Tensor tokens = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong);
  EXPECT_EQ(tokens.size(0), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(tokens[0].item<int64_t>(), 1);
  EXPECT_EQ(tok.decode(ids), "I believe the meaning of life is");
  EXPECT_EQ((x * 2).sum().item<float>(), 30.0f);  // torch still works after SentencePiece ran

  // The shim was loaded RTLD_LOCAL: none of its symbols leak into the global scope.
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "llt_spm_encode"), nullptr);
  EXPECT_FALSE(llt::Tokenizer::shim_path().empty());
}

// A missing shim is a RuntimeError naming the path tried. The shim loads once per process, so
// the check runs in a child process of this same binary with LLT_SPM_SHIM set to a bad path.
TEST(Tokenizer, MissingShimIsRuntimeError) {
  const char* bad_shim = "/nonexistent/dir/libllt_spm.so";
  if (std::getenv("LLT_TEST_MISSING_SHIM_CHILD") != nullptr) {
    try {
      llt::Tokenizer::load(kTok512);
      FAIL() << "expected llt::RuntimeError";
    } catch (const llt::RuntimeError& e) {
      EXPECT_NE(std::string(e.what()).find(bad_shim), std::string::npos) << e.what();
    }
    return;
  }
  const fs::path self = fs::read_symlink("/proc/self/exe");
  const std::string command = std::string("LLT_TEST_MISSING_SHIM_CHILD=1 LLT_SPM_SHIM=") +
                              bad_shim + " '" + self.string() +
                              "' --gtest_filter=Tokenizer.MissingShimIsRuntimeError >/dev/null";
  EXPECT_EQ(std::system(command.c_str()), 0) << "child failed: " << command;
}

}  // namespace
