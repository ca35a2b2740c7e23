#include "llt/tools/perplexity.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "llt/dataset.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/perplexity.h"
#include "llt/runtime.h"
#include "llt/tokenizer.h"
#include "llt/tools/setup.h"
#include "llt/utf8.h"
#include "llt/weights.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

// What the tool scores, resolved from the options before the model loads.
struct Plan {
  ModelArgs args;      // the checkpoint's, read without weights
  int64_t window = 0;  // --text only
  int64_t stride = 0;
  std::optional<Dataset> data;  // --data only
  std::string text;             // --text only: the file's bytes
};

void check_options(const PerplexityToolOptions& o) {
  if (o.data.empty() == o.text.empty()) {
    throw InputError("give exactly one of --data DIR and --text FILE");
  }
  if (!o.text.empty() && o.tokens != ScoredTokens::kLabels) {
    throw InputError("--tokens applies to --data; --text scores every token but the first");
  }
  if (!o.data.empty() && (o.window != 0 || o.stride != 0)) {
    throw InputError("--window and --stride apply to --text; --data scores whole samples");
  }
  if (o.batch_size < 1) {
    throw InputError("--batch-size " + std::to_string(o.batch_size) + ": must be at least 1");
  }
  if (o.output.empty()) throw InputError("--output: a folder is required");
  if (fs::exists(o.output) && !fs::is_directory(o.output)) {
    throw InputError(o.output + ": not a folder (--output)");
  }
  refuse_existing(fs::path(o.output) / "perplexity.json", o.overwrite, "--output");
  if (!o.per_sample.empty()) refuse_existing(o.per_sample, o.overwrite, "--per-sample");
}

// --window/--stride against the model, defaulting to one window of max_seq_len per stride.
void resolve_windows(const PerplexityToolOptions& o, Plan& plan) {
  const int64_t max_seq_len = plan.args.max_seq_len;
  plan.window = o.window != 0 ? o.window : max_seq_len;
  plan.stride = o.stride != 0 ? o.stride : plan.window;
  if (plan.window < 2 || plan.window > max_seq_len) {
    throw InputError("--window " + std::to_string(plan.window) + ": must be in [2, " +
                     std::to_string(max_seq_len) + "], the model's max_seq_len (" + o.model.model +
                     ")");
  }
  if (plan.stride < 1 || plan.stride > plan.window) {
    throw InputError("--stride " + std::to_string(plan.stride) + ": must be in [1, --window " +
                     std::to_string(plan.window) + "]");
  }
}

// Opens --data checked against the model (as llt-finetune does) and, if --tokenizer is given,
// against that tokenizer too.
Dataset open_data(const PerplexityToolOptions& o, const ModelArgs& args) {
  DatasetRequirements needs;
  needs.model_vocab_size = args.vocab_size;
  if (!o.model.tokenizer.empty()) {
    const auto tokenizer = Tokenizer::load(o.model.tokenizer);
    needs.vocab_size = tokenizer.vocab_size();
    needs.bos_id = tokenizer.bos_id();
    needs.eos_id = tokenizer.eos_id();
    needs.tokenizer_sha256 = tokenizer.sha256();
  }
  Dataset data = Dataset::open(o.data, needs);
  const int64_t longest = data.manifest().length_histogram.max;
  if (longest > args.max_seq_len) {
    throw InputError(o.data + ": the longest sample has " + std::to_string(longest) +
                     " tokens, more than the model's max_seq_len " +
                     std::to_string(args.max_seq_len) + " (" + o.model.model +
                     "); re-run llt-tokenize with --max-len " + std::to_string(args.max_seq_len));
  }
  return data;
}

Plan make_plan(const PerplexityToolOptions& o) {
  check_options(o);
  Plan plan;
  plan.args = read_model_args(o.model.model);
  if (!o.data.empty()) {
    plan.data = open_data(o, plan.args);
    return plan;
  }
  resolve_windows(o, plan);
  plan.text = read_file(o.text);
  check_utf8_text(plan.text, o.text + " (--text)");
  if (plan.text.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw InputError(o.text + ": the text file is empty (--text)");
  }
  return plan;
}

nlohmann::json or_null(const std::string& s) {
  return s.empty() ? nlohmann::json() : nlohmann::json(s);
}
nlohmann::json or_null(int64_t v, bool present) {
  return present ? nlohmann::json(v) : nullptr;
}

std::string per_sample_jsonl(const PerplexityResult& result, bool text) {
  std::ostringstream out;
  for (const auto& s : result.sequences) {
    nlohmann::json j = {{"index", s.index},
                        {"tokens", s.tokens},
                        {"nll_sum", s.nll_sum},
                        {"mean_nll", s.nll_sum / static_cast<double>(s.tokens)}};
    if (text) j["start"] = s.start;  // the window's first token in the text
    out << j.dump() << "\n";
  }
  return out.str();
}

nlohmann::json summary_json(const PerplexityToolOptions& o, const Plan& plan,
                            const InferenceModel& m, const PerplexityResult& r) {
  const bool text = !o.text.empty();
  nlohmann::json j = {
      {"mean_nll", r.mean_nll()},
      {"perplexity", r.perplexity()},
      {"tokens", r.tokens},
      {"samples", static_cast<int64_t>(r.sequences.size())},  // samples, or windows of --text
      {"over", text ? std::string("text") : name_of(o.tokens)},
      {"data", or_null(o.data)},
      {"text", or_null(o.text)},
      {"window", or_null(plan.window, text)},
      {"stride", or_null(plan.stride, text)},
      {"batch_size", o.batch_size},
      {"forward_tokens", r.forward_tokens},  // tokens run through the model, padding excluded
      {"elapsed_s", r.seconds},              // scoring only; loading is load_s
      {"load_s", m.load_seconds},
      {"tokens_per_s", r.seconds > 0 ? r.forward_tokens / r.seconds : 0.0},
      {"threads", m.threads},
      {"command_line", o.command_line},
  };
  j.update(model_provenance(o.model, m));
  return j;
}

}  // namespace

int run_perplexity(const PerplexityToolOptions& o) {
  const Plan plan = make_plan(o);  // every check that needs no weights
  std::vector<ScoredSequence> sequences;
  int64_t pad_id = 0;
  std::optional<InferenceModel> model;
  if (plan.data) {
    model.emplace(load_inference_model(o.model));
    sequences = dataset_sequences(*plan.data, o.tokens);
    pad_id = plan.data->manifest().attributes.eos_id;
  } else {
    ModelSetup setup = setup_model(o.model);
    const auto ids = setup.tokenizer.encode(plan.text, /*bos=*/true, /*eos=*/false);
    if (ids.size() < 2) throw InputError(o.text + ": no token to score after BOS (--text)");
    sequences = text_windows(ids, plan.window, plan.stride);
    pad_id = setup.tokenizer.eos_id();
    model.emplace(std::move(setup));
  }
  const PerplexityResult result =
      score_sequences(*model->loaded.model, sequences, o.batch_size, pad_id);

  if (!o.per_sample.empty()) {
    const auto parent = fs::path(o.per_sample).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    write_file_atomic(o.per_sample, per_sample_jsonl(result, !o.text.empty()), o.overwrite);
  }
  fs::create_directories(o.output);
  write_file_atomic(fs::path(o.output) / "perplexity.json",
                    summary_json(o, plan, *model, result).dump(1) + "\n", o.overwrite);
  std::cout << "llt-perplexity: " << result.tokens << " tokens ("
            << (o.text.empty() ? name_of(o.tokens) : std::string("text")) << ") in " << result.sequences.size()
            << (o.text.empty() ? " samples" : " windows") << ": mean NLL " << std::setprecision(6)
            << result.mean_nll() << ", perplexity " << result.perplexity() << ", "
            << std::setprecision(3) << result.seconds << " s ("
            << static_cast<int64_t>(result.seconds > 0 ? result.forward_tokens / result.seconds : 0)
            << " tokens/s)" << std::endl;
  return 0;
}

}  // namespace llt::tools
