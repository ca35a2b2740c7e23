// Generation throughput of llt (tokens/s), KV cache on and off, for a checkpoint or a random
// model of a preset's shape. One JSON line per configuration on stdout. A benchmark, not a test:
// bench/run_generate_bench.sh runs it beside the Python reference and writes the table.
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/generate.h"
#include "llt/runtime.h"
#include "llt/weights.h"

namespace {

struct BenchOptions {
  std::string model;               // checkpoint path, or empty for a random preset model
  std::string preset = "llama2_7b";
  int64_t n_layers = 1;
  std::string dtype = "fp32";
  std::string device = "cpu";
  std::vector<std::string> kv_cache = {"on", "off"};
  int64_t max_new_tokens = 256;
  int64_t prompt_len = 8;
  int64_t batch = 1;
  int threads = 1;
  int repeats = 1;
  bool profile_forward = false;
};

// Why the KV cache's gain is bounded: the time of one full forward at each length T (what the
// no-cache path pays at step T) beside one cached single-token step at position T.
void profile_forward(llt::TransformerImpl& model, const BenchOptions& o) {
  c10::InferenceMode inference;
  const auto opts = model.tok_embeddings->weight.options();
  for (int64_t t : {1, 8, 32, 64, 128, 256}) {
    const auto tokens = at::randint(3, 300, {1, t}, at::kLong).to(opts.device());
    auto time_it = [&](auto&& fn) {
      fn();  // warm-up
      const auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < o.repeats; ++r) fn();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
             o.repeats;
    };
    const double full = time_it([&] { model.forward(tokens); });
    auto cache = llt::KVCache::allocate(model.args(), 1, t + 1, opts);
    model.forward(tokens, &cache);
    const double step = time_it([&] {
      cache.length = t;
      model.forward(tokens.slice(1, 0, 1), &cache);
    });
    std::cout << nlohmann::json({{"profile", "forward"}, {"T", t}, {"full_forward_s", full},
                                 {"cached_step_s", step}, {"ratio", full / step},
                                 {"dtype", o.dtype}, {"threads", o.threads}})
                     .dump()
              << std::endl;
  }
}

llt::Transformer make_model(const BenchOptions& o, const c10::Device& device,
                            at::ScalarType dtype) {
  if (!o.model.empty()) {
    llt::LoadOptions load;
    load.device = device;
    load.dtype = dtype;
    return llt::load_model(o.model, load).model;
  }
  llt::ModelArgs args = llt::preset_args(o.preset);
  args.n_layers = o.n_layers;
  llt::Transformer model(args, at::TensorOptions().dtype(dtype).device(device));
  model->init_random(/*seed=*/0);
  return model;
}

}  // namespace

int main(int argc, char** argv) {
  llt::init_process();
  BenchOptions o;
  CLI::App app{"llt generation benchmark", "bench_generate"};
  app.add_option("--model", o.model, "Checkpoint (default: random weights of --preset)");
  app.add_option("--preset", o.preset, "Preset shape for random weights");
  app.add_option("--n-layers", o.n_layers, "Blocks of the random model");
  app.add_option("--dtype", o.dtype, "fp32 | bf16 | fp16 (CUDA)")
      ->check(CLI::IsMember(llt::names_list<llt::Dtype>()));
  app.add_option("--device", o.device, "cpu | cuda");
  app.add_option("--kv-cache", o.kv_cache, "on, off or both (repeat the flag)");
  app.add_option("--max-new-tokens", o.max_new_tokens, "Generated tokens");
  app.add_option("--prompt-len", o.prompt_len, "Prompt tokens (BOS + fixed ids)");
  app.add_option("--batch", o.batch, "Sequences decoded together");
  app.add_option("--threads", o.threads, "Intra-op threads");
  app.add_option("--repeats", o.repeats, "Timed repetitions (the best is reported)");
  app.add_flag("--profile-forward", o.profile_forward,
               "Time one full forward vs one cached step at several lengths, then exit");
  CLI11_PARSE(app, argc, argv);
  try {
    llt::configure_threads(o.threads);
    const auto device = llt::resolve_device(o.device);
    const auto dtype = llt::resolve_dtype(*llt::value_of<llt::Dtype>(o.dtype), device);
    auto model = make_model(o, device, dtype);
    if (o.profile_forward) {
      profile_forward(*model, o);
      return 0;
    }
    std::vector<int64_t> prompt = {1};
    for (int64_t i = 1; i < o.prompt_len; ++i) prompt.push_back(100 + 7 * i % 300);
    const std::vector<std::vector<int64_t>> prompts(o.batch, prompt);
    for (const auto& kv : o.kv_cache) {
      llt::GenerateOptions gen;
      gen.sampling.max_new_tokens = o.max_new_tokens;
      gen.kv_cache = kv == "on";  // no stop ids: always max_new_tokens per sequence
      llt::generate(*model, prompts, [&] {
        auto warm = gen;
        warm.sampling.max_new_tokens = 4;
        return warm;
      }());
      double best = 1e30;
      int64_t tokens = 0;
      for (int r = 0; r < o.repeats; ++r) {
        const auto result = llt::generate(*model, prompts, gen);
        tokens = 0;
        for (const auto& s : result.sequences) tokens += static_cast<int64_t>(s.ids.size());
        best = std::min(best, result.seconds);
      }
      nlohmann::json line = {
          {"impl", "llt"},
          {"model", o.model.empty() ? o.preset + "-" + std::to_string(o.n_layers) + "L-random"
                                    : o.model},
          {"dtype", o.dtype},
          {"device", device.str()},
          {"kv_cache", kv},
          {"threads", o.threads},
          {"batch", o.batch},
          {"prompt_len", o.prompt_len},
          {"new_tokens", tokens},
          {"seconds", best},
          {"tokens_per_s", tokens / best},
          {"malloc_tuning", llt::malloc_tuning_active()},
      };
      std::cout << line.dump() << std::endl;
    }
  } catch (const std::exception& e) {
    return llt::report_exception("bench_generate", e);
  }
  return 0;
}
