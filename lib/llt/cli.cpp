#include "llt/cli.h"

#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

namespace llt::cli {
namespace {

void add_config_option(CLI::App& app) {
  app.set_config("--config", "", "TOML file of flat keys named like the flags (lora-rank = 16)");
  // Debian's CLI11 2.1 silently ignores [sections] and unknown keys unless told otherwise.
  app.allow_config_extras(CLI::config_extras_mode::error);
}

void add_model_options(CLI::App& app, ModelOptions& o) {
  app.add_option("--model", o.model, "Checkpoint file or directory (Meta, Hugging Face, llama2.c)")
      ->required()
      ->check(CLI::ExistingPath);
  app.add_option("--tokenizer", o.tokenizer,
                 "SentencePiece model (default: tokenizer.model beside the checkpoint)")
      ->check(CLI::ExistingFile);
  app.add_option("--device", o.device, "auto | cpu | cuda[:N]")->capture_default_str();
  app.add_option("--dtype", o.dtype, "Compute dtype")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads (0: SLURM_CPUS_PER_TASK, else all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--n-layers", o.n_layers, "Keep only the first N blocks (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

void add_sampling_options(CLI::App& app, SamplingOptions& o) {
  app.add_option("--max-new-tokens", o.max_new_tokens, "Generated tokens per prompt, at most")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--temperature", o.temperature, "0 = greedy")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--top-k", o.top_k, "Sample from the k most likely tokens (0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--top-p", o.top_p, "Nucleus sampling mass (1: off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Sampler seed")->capture_default_str();
}

// Runs CLI11 and turns its outcome into Exit: help -> 0, any parse error -> 1 (never CLI11's
// own codes 104, 105, 110...).
void parse_or_exit(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    std::cout << app.help();
    throw Exit{0};
  } catch (const CLI::CallForAllHelp& e) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    throw Exit{0};
  } catch (const CLI::ParseError& e) {
    std::cerr << app.get_name() << ": error: " << e.what() << "\n";
    throw Exit{1};
  }
}

}  // namespace

GenerateToolOptions parse_generate(int argc, char** argv) {
  GenerateToolOptions o;
  CLI::App app{"Generate completions from a LLaMA model, with or without the KV cache.",
               "llt-generate"};
  add_config_option(app);
  add_model_options(app, o.model);
  add_sampling_options(app, o.sampling);
  app.add_option("--prompt", o.prompts, "A prompt (repeatable)");
  app.add_option("--prompts-file", o.prompts_file,
                 "Prompts: one per line, or JSONL records with \"prompt\" or "
                 "\"instruction\"/\"input\"")
      ->check(CLI::ExistingFile);
  app.add_option("--template", o.template_name, "Wrap prompts: none | alpaca (stanford_alpaca)")
      ->check(CLI::IsMember({"none", "alpaca"}))
      ->capture_default_str();
  app.add_option("--kv-cache", o.kv_cache, "Reuse keys/values across steps")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_option("--bos", o.bos, "Prepend BOS to each prompt")->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "Prompts decoded together")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--output", o.output, "Write JSONL: one record per prompt");
  app.add_flag("--overwrite", o.overwrite, "Replace an existing --output file");
  parse_or_exit(app, argc, argv);
  if (o.prompts.empty() && o.prompts_file.empty()) {
    std::cerr << app.get_name() << ": error: give --prompt or --prompts-file\n";
    throw Exit{1};
  }
  return o;
}

}  // namespace llt::cli
