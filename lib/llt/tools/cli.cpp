#include "llt/tools/cli.h"

#include <cmath>
#include <exception>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

#include "llt/errors.h"
#include "llt/export.h"
#include "llt/runtime.h"

namespace llt::tools {
namespace {

// An option whose values are the names in E's table (llt/names.h), converted at parse time: the
// flag takes exactly those names, and the resolved config writes the name, not the value.
template <typename E>
CLI::Option* add_choice(CLI::App& app, const std::string& flag, E& field,
                        const std::string& help) {
  return app
      .add_option_function<std::string>(
          flag, [&field](const std::string& name) { field = *value_of<E>(name); }, help)
      ->check(CLI::IsMember(names_list<E>()))
      ->default_str(name_of(field));
}

// "1", "0.5", "65535": a bound as a reader writes it (CLI11 prints doubles with %f).
std::string number_text(double v) {
  std::ostringstream out;
  out << std::setprecision(15) << v;
  return out.str();
}

// The message of a number that is not finite or outside [min, max] ("" if it is fine):
// "must be >= 1, got 0", "must be a finite number, got nan". `above`: min itself is refused.
std::string check_number(const std::string& value, double min, double max, bool above = false) {
  double v = 0;
  size_t used = 0;
  try {
    v = std::stod(value, &used);
  } catch (const std::exception&) {
  }
  if (used == 0 || used != value.size()) return "must be a number, got '" + value + "'";
  if (!std::isfinite(v)) return "must be a finite number, got " + value;
  if ((above ? v > min : v >= min) && v <= max) return "";
  if (max == std::numeric_limits<double>::infinity()) {
    return "must be " + std::string(above ? "> " : ">= ") + number_text(min) + ", got " + value;
  }
  return "must be in [" + number_text(min) + ", " + number_text(max) + "], got " + value;
}

// The check of every number flag: finite and within [min, max], in words (CLI11's Range,
// PositiveNumber and NonNegativeNumber print the whole double range and let nan through).
CLI::Validator number_in(double min = -std::numeric_limits<double>::infinity(),
                         double max = std::numeric_limits<double>::infinity()) {
  std::string description;
  if (max != std::numeric_limits<double>::infinity()) {
    description = "in [" + number_text(min) + ", " + number_text(max) + "]";
  } else if (min != -std::numeric_limits<double>::infinity()) {
    description = ">= " + number_text(min);
  }
  return CLI::Validator(
      [min, max](std::string& value) { return check_number(value, min, max); }, description);
}

// A number flag that must be finite and > 0 (a duration, a size).
CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& value) {
        return check_number(value, 0, std::numeric_limits<double>::infinity(), /*above=*/true);
      },
      "> 0");
}

// CLI11's TOML reader with errors that name the file, the line and the key: an unknown key, a
// [table], a key that cannot be set from a file, or a value of the wrong type or range (checked
// here with the option's own validators, before CLI11 applies it). CLI11 2.1's own messages say
// "INI was not able to parse KEY" and name no file.
class FlatTomlConfig : public CLI::ConfigTOML {
 public:
  explicit FlatTomlConfig(CLI::App* app) : app_(app) {}

  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    const std::string text{std::istreambuf_iterator<char>(input), std::istreambuf_iterator<char>()};
    // CLI11 reads the --config files last to first.
    const auto& files = app_->get_config_ptr()->results();
    const std::string file =
        calls_ < files.size() ? files[files.size() - 1 - calls_] : std::string("--config");
    ++calls_;
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(CLI::detail::trim_copy(line));
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].size() > 1 && lines[i].front() == '[' && lines[i].back() == ']') {
        throw CLI::ConfigError(file + ":" + std::to_string(i + 1) + ": " + lines[i] +
                               ": tables are not supported; keys are flat, named like the flags "
                               "(lora-rank = 16)");
      }
    }
    std::istringstream copy(text);
    auto items = CLI::ConfigTOML::from_config(copy);
    for (const auto& item : items) check_item(item, file, lines);
    return items;
  }

 private:
  // "FILE:LINE" of the line that sets `key` ("FILE" if none is found).
  static std::string where(const std::string& file, const std::vector<std::string>& lines,
                           const std::string& key) {
    for (size_t i = 0; i < lines.size(); ++i) {
      for (const std::string& name : {key, '"' + key + '"', "'" + key + "'"}) {
        if (lines[i].compare(0, name.size(), name) != 0) continue;
        const size_t next = lines[i].find_first_not_of(" \t", name.size());
        if (next == std::string::npos || lines[i][next] == '=') {
          return file + ":" + std::to_string(i + 1);
        }
      }
    }
    return file;
  }

  void check_item(const CLI::ConfigItem& item, const std::string& file,
                  const std::vector<std::string>& lines) const {
    const std::string key = item.fullname();
    const std::string at = where(file, lines, key);
    CLI::Option* op = item.parents.empty() ? app_->get_option_no_throw("--" + item.name) : nullptr;
    if (op == nullptr) {
      throw CLI::ConfigError(at + ": unknown key '" + key +
                             "' (keys are the flag names without --)");
    }
    if (!op->get_configurable()) {
      throw CLI::ConfigError(at + ": key '" + key + "' cannot be set in a config file; give --" +
                             key + " on the command line");
    }
    if (!op->empty()) return;  // given on the command line, which wins: CLI11 skips this value
    const std::string type = op->get_type_name().substr(0, op->get_type_name().find(':'));
    for (std::string value : item.inputs) {
      std::string error;
      if (op->get_expected_min() == 0 || type == "BOOLEAN") {
        try {
          CLI::detail::to_flag_value(value);
        } catch (const std::exception&) {
          error = "expected true or false, got '" + value + "'";
        }
      } else if (type == "INT" || type == "UINT") {
        size_t used = 0;
        try {
          std::stoll(value, &used);
        } catch (const std::exception&) {
        }
        if (used == 0 || used != value.size() || (type == "UINT" && value[0] == '-')) {
          error = "expected " + std::string(type == "UINT" ? "a non-negative " : "an ") +
                  "integer, got '" + value + "'";
        }
      } else if (type == "FLOAT") {
        error = check_number(value, -std::numeric_limits<double>::infinity(),
                             std::numeric_limits<double>::infinity());
        if (!error.empty()) error = "expected a finite number, got '" + value + "'";
      }
      for (int i = 0; error.empty(); ++i) {  // the option's validators, as CLI11 runs them
        CLI::Validator* validator = nullptr;
        try {
          validator = op->get_validator(i);
        } catch (const CLI::OptionNotFound&) {
          break;
        }
        std::string copy = value;
        try {
          error = (*validator)(copy);
        } catch (const CLI::ValidationError& e) {
          error = e.what();
        }
      }
      if (!error.empty()) throw CLI::ConfigError(at + ": key '" + key + "': " + error);
    }
  }

  CLI::App* app_;
  mutable size_t calls_ = 0;
};

void add_config_option(CLI::App& app) {
  app.set_config("--config", "", "TOML file of flat keys named like the flags (lora-rank = 16)");
  app.config_formatter(std::make_shared<FlatTomlConfig>(&app));
  // Debian's CLI11 2.1 silently ignores [sections] and unknown keys unless told otherwise.
  app.allow_config_extras(CLI::config_extras_mode::error);
}

// --model: an existing path, or preset:NAME.
CLI::Option* add_model_path(CLI::App& app, std::string& model) {
  return app
      .add_option("--model", model,
                  "Checkpoint file or directory (Meta, Hugging Face, llama2.c), or preset:NAME "
                  "(llama2_7b, llama2_13b, tiny) for random weights of that shape")
      ->check(CLI::Validator(
          [](const std::string& path) -> std::string {
            if (path.rfind("preset:", 0) == 0) return "";  // random weights of a preset shape
            return CLI::ExistingPath(path);
          },
          "PATH|preset:NAME"));
}

// `with_tokenizer`: llt-finetune takes none (its shards carry the tokenizer's identity).
void add_model_options(CLI::App& app, ModelOptions& o, bool with_tokenizer = true) {
  add_model_path(app, o.model)->required();
  if (with_tokenizer) {  // the inference tools: they also take an adapter
    app.add_option("--adapter", o.adapter, "LoRA adapter folder to apply: a run's adapter/ or adapter-peft/, or a Hugging Face PEFT "
                   "LoRA adapter (adapter_config.json + adapter_model.safetensors)")
        ->check(CLI::ExistingDirectory);
    app.add_option("--tokenizer", o.tokenizer,
                   "SentencePiece model (default: tokenizer.model beside the checkpoint)")
        ->check(CLI::ExistingFile);
  }
  app.add_option("--device", o.device, "auto | cpu | cuda[:N]")->capture_default_str();
  add_choice(app, "--dtype", o.dtype, "Compute dtype");
  app.add_option("--threads", o.threads, "CPU threads (0: SLURM_CPUS_PER_TASK, else all cores)")
      ->check(number_in(0))
      ->capture_default_str();
  app.add_option("--n-layers", o.n_layers, "Keep only the first N blocks (0: all)")
      ->check(number_in(0))
      ->capture_default_str();
}

void add_sampling_options(CLI::App& app, SamplingOptions& o) {
  app.add_option("--max-new-tokens", o.max_new_tokens, "Generated tokens per prompt, at most")
      ->check(number_in(1))
      ->capture_default_str();
  app.add_option("--temperature", o.temperature, "0 = greedy")
      ->check(number_in(0))
      ->capture_default_str();
  app.add_option("--top-k", o.top_k, "Sample from the k most likely tokens (0: off)")
      ->check(number_in(0))
      ->capture_default_str();
  app.add_option("--top-p", o.top_p, "Nucleus sampling mass (1: off)")
      ->check(number_in(0, 1))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Sampler seed")->capture_default_str();
}

// A deprecated flag that was given becomes the flag that replaces it (its value times `factor`),
// with a warning; giving both is an error. Either way the deprecated flag leaves the app, so the
// resolved config names only the new one.
void replace_deprecated(CLI::App& app, CLI::Option* old_flag, double old_value,
                        CLI::Option* new_flag, double& new_value, double factor) {
  const std::string old_name = old_flag->get_name(), new_name = new_flag->get_name();
  if (old_flag->count() > 0) {
    if (new_flag->count() > 0) {
      throw InputError(old_name + " and " + new_name + ": give only " + new_name);
    }
    new_value = old_value * factor;
    std::cerr << app.get_name() << ": warning: " << old_name << " is deprecated; " << old_name
              << " " << old_value << " is " << new_name << " " << new_value << "\n";
    std::ostringstream value;
    value << std::setprecision(17) << new_value;  // reads back as the same double
    new_flag->clear();
    new_flag->add_result(value.str());
  }
  app.remove_option(old_flag);
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
    std::string message = e.what();
    // CLI11 writes a validator's message as "--flag: must be >= 1, got 0"; drop the colon.
    const size_t colon = message.find(": must be ");
    if (message.rfind("--", 0) == 0 && colon != std::string::npos) message.erase(colon, 1);
    std::cerr << app.get_name() << ": error: " << message << "\n";
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
                 "Prompts: one per line, JSONL records with \"prompt\" or "
                 "\"instruction\"/\"input\", or a JSON object with a \"prompts\" array "
                 "(assets/data/seed_prompts.json)")
      ->check(CLI::ExistingFile);
  add_choice(app, "--template", o.prompt_template, "Wrap prompts: none | alpaca (stanford_alpaca)");
  add_choice(app, "--kv-cache", o.kv_cache, "Reuse keys/values across steps");
  app.add_option("--bos", o.bos, "Prepend BOS to each prompt")->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "Prompts decoded together")
      ->check(number_in(1))
      ->capture_default_str();
  app.add_option("--output", o.output, "Write JSONL: one record per prompt");
  app.add_flag("--overwrite", o.overwrite, "Replace an existing --output file");
  parse_or_exit(app, argc, argv);
  if (o.prompts.empty() && o.prompts_file.empty()) {
    std::cerr << app.get_name() << ": error: give --prompt or --prompts-file\n";
    throw Exit{1};
  }
  o.command_line = command_line(argc, argv);
  return o;
}

TokenizeToolOptions parse_tokenize(int argc, char** argv) {
  TokenizeToolOptions o;
  CLI::App app{
      "Tokenize Alpaca JSON/JSONL into HDF5 shards for llt-finetune (stanford_alpaca's "
      "recipe: prompt tokens masked, BOS + prompt + output + EOS).",
      "llt-tokenize"};
  add_config_option(app);
  app.add_option("--input", o.input,
                 "Alpaca JSON array or JSONL of {instruction, input, output} (default: the "
                 "shipped assets/data/alpaca/alpaca_data_first_5000.json)")
      ->check(CLI::ExistingFile);
  app.add_option("--tokenizer", o.tokenizer, "SentencePiece .model")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--output", o.output,
                 "Dataset directory (manifest.json + shard-gG-NNNNN.h5, G the run's generation)")
      ->required();
  app.add_option("--max-len", o.max_len, "Tokens per sample at most; longer samples are cut")
      ->check(number_in(2, double(int64_t{1} << 30)))
      ->capture_default_str();
  app.add_option("--skip", o.skip, "Skip the first K records")
      ->check(number_in(0))
      ->capture_default_str();
  app.add_option("--first", o.first, "Take N records after --skip (0: all the rest)")
      ->check(number_in(0))
      ->capture_default_str();
  app.add_option("--split", o.splits,
                 "NAME=START:END (repeatable): records [START, END) into DIR/NAME");
  app.add_option("--samples-per-shard", o.samples_per_shard, "Samples per shard file, at most")
      ->check(number_in(1))
      ->capture_default_str();
  app.add_option("--max-record-bytes", o.max_record_bytes,
                 "A record whose instruction + input + output exceed this many bytes is bad")
      ->check(number_in(1))
      ->capture_default_str();
  add_choice(app, "--on-bad-record", o.on_bad_record,
             "fail: exit 1 naming the record; skip: drop it and list it in the manifest");
  app.add_flag("--overwrite", o.overwrite, "Replace the dataset in an existing --output");
  app.add_option("--threads", o.threads,
                 "Tokenizer threads (0: SLURM_CPUS_PER_TASK, else all cores)")
      ->check(number_in(0))
      ->capture_default_str();
  parse_or_exit(app, argc, argv);
  return o;
}

FinetuneToolOptions parse_finetune(int argc, char** argv) {
  FinetuneToolOptions o;
  CLI::App app{"Fine-tune a LLaMA model (LoRA or full) on an llt-tokenize dataset.",
               "llt-finetune"};
  add_config_option(app);
  add_model_options(app, o.model, /*with_tokenizer=*/false);
  app.get_option("--dtype")->description("dtype of the trained parameters (fp32 master weights)");
  app.add_option("--data", o.data, "Dataset directory from llt-tokenize")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--output", o.output, "Run folder (refused if it exists, unless --resume auto)")
      ->required();
  // No CLI11 checks on --eval-data: config.toml records "" when it is unset.
  app.add_option("--eval-data", o.eval_data,
                 "Held-out dataset directory from llt-tokenize: its perplexity at step 0, every "
                 "--eval-every steps and at the end")
      ->capture_default_str();
  app.add_option("--hf-base", o.hf_base,
                 "Hub name of the base model for adapter-peft/ (e.g. meta-llama/Llama-2-7b-hf; "
                 "default: an HF --model folder's _name_or_path)")
      ->capture_default_str();
  app.add_option("--eval-every", o.eval_every, "Evaluate on --eval-data every N steps (0: only "
                 "at step 0 and at the end)")
      ->check(number_in(0))->capture_default_str();
  auto& t = o.train;
  app.add_option("--batch-size", t.batch_size, "Samples per micro-batch")
      ->check(number_in(1))->capture_default_str();
  app.add_option("--grad-accum", t.grad_accum, "Micro-batches per optimizer step")
      ->check(number_in(1))->capture_default_str();
  app.add_option("--epochs", t.epochs, "Passes over the data (sets the schedule's length)")
      ->check(number_in(1))->capture_default_str();
  app.add_option("--max-steps", t.max_steps, "Stop after N optimizer steps (0: all)")
      ->check(number_in(0))->capture_default_str();
  add_choice(app, "--shuffle", t.shuffle, "on | off");
  app.add_option("--seed", t.seed, "Data order, LoRA init, dropout")->capture_default_str();
  add_choice(app, "--precision", t.precision, "Autocast compute dtype: fp32 | bf16 | fp16");
  auto dtypes = names_list<Dtype>();
  dtypes.insert(dtypes.begin(), "");  // "": as --dtype
  app.add_option_function<std::string>(
         "--base-dtype",
         [&t](const std::string& name) {
           t.base_dtype = name.empty() ? std::nullopt : value_of<Dtype>(name);
         },
         "Frozen base weights: fp32 | bf16 | fp16")
      ->check(CLI::IsMember(dtypes));
  add_choice(app, "--loss-normalization", t.loss_normalization,
             "tokens (every label token weighs the same) | micro-batch (the seed's mean)");
  app.add_option_function<std::string>(
         "--resume",
         [&t](const std::string& value) {
           t.resume = value_of<ResumeMode>(value).value_or(ResumeMode::kPath);
           t.resume_path = t.resume == ResumeMode::kPath ? value : "";
         },
         "auto | never | PATH of a checkpoints/step-N folder")
      ->default_str(name_of(t.resume));
  app.add_option("--save-every", t.save_every, "Checkpoint every N steps (0: only at the end)")
      ->check(number_in(0))->capture_default_str();
  app.add_option("--log-every", t.log_every, "Progress line every N steps")
      ->check(number_in(0))->capture_default_str();
  CLI::Option* cap_gib = app.add_option("--memory-cap-gib", t.memory_cap_gib,
                 "Tensor memory cap in GiB, to emulate a smaller device (CUDA: the caching "
                 "allocator, context excluded; CPU: counted host bytes; 0: none)")
      ->check(number_in(0))->capture_default_str();
  double memory_cap_gb = 0;  // the deprecated decimal name (x 1e9 bytes)
  CLI::Option* cap_gb =
      app.add_option("--memory-cap-gb", memory_cap_gb, "Deprecated: --memory-cap-gib (x 1e9 bytes)")
      ->check(number_in(0));
  auto& l = o.lora;
  app.add_option("--lora-rank", l.rank, "LoRA rank r (0: full fine-tuning)")
      ->check(number_in(0))->capture_default_str();
  app.add_option("--lora-alpha", l.alpha, "LoRA alpha (scale alpha / r)")
      ->check(number_in())->capture_default_str();
  app.add_option("--lora-dropout", l.dropout, "Dropout on the adapter input")
      ->check(number_in(0, 1))->capture_default_str();
  app.add_option("--lora-targets", l.targets, "Comma-separated: wq,wk,wv,wo,w1,w2,w3")
      ->delimiter(',')->capture_default_str();
  auto& p = o.optim;
  app.add_option("--lr", p.lr, "Peak learning rate")->check(number_in())->capture_default_str();
  add_choice(app, "--lr-schedule", p.lr_schedule, "constant | cosine | linear");
  app.add_option("--warmup-steps", p.warmup_steps, "Linear warmup steps")
      ->check(number_in(0))->capture_default_str();
  app.add_option("--weight-decay", p.weight_decay, "AdamW decoupled weight decay")
      ->check(number_in(0))->capture_default_str();
  app.add_option("--grad-clip", p.grad_clip, "Max global gradient L2 norm (0: off)")
      ->check(number_in(0))->capture_default_str();
  auto& r = o.recompute;
  add_choice(app, "--grad-checkpoint", r.policy,
             "Recompute activations in backward: none | block | every-k | ffn");
  app.add_option("--grad-checkpoint-every", r.every, "K of every-k")
      ->check(number_in(1))->capture_default_str();
  auto& d = o.dist;  // data parallelism; unset values come from srun's or torchrun's environment
  app.add_option("--world-size", d.world_size,
                 "Processes (0: WORLD_SIZE, else SLURM_STEP_NUM_TASKS under srun, else 1)")
      ->check(number_in(0))->capture_default_str();
  // Per process, so never read from a shared --config file (nor written to config.toml).
  app.add_option("--rank", d.rank, "This process's rank (-1: RANK, else SLURM_PROCID)")
      ->check(number_in(-1, double(int64_t{1} << 20)))->configurable(false);
  app.add_option("--dist-init", d.init,
                 "Rendezvous: file:///SHARED/PATH or tcp://HOST:PORT (default: MASTER_ADDR, "
                 "else the first host of the SLURM step)");
  app.add_option("--dist-port", d.port,
                 "Port of the default rendezvous (0: MASTER_PORT, else from SLURM_JOB_ID)")
      ->check(number_in(0, 65535))->capture_default_str();
  app.add_option("--dist-timeout", d.timeout, "Seconds to wait for the other processes")
      ->check(positive_number())->capture_default_str();
  CLI::Option* bucket_mib =
      app.add_option("--dist-bucket-mib", d.bucket_mib, "MiB of gradients per all-reduce")
          ->check(positive_number())->capture_default_str();
  double bucket_mb = 0;  // the deprecated name (its "MB" meant 2^20 bytes already)
  CLI::Option* bucket_mb_option =
      app.add_option("--dist-bucket-mb", bucket_mb, "Deprecated: --dist-bucket-mib")
          ->check(positive_number());
  parse_or_exit(app, argc, argv);
  // The resolved config names only the new flags.
  replace_deprecated(app, cap_gb, memory_cap_gb, cap_gib, t.memory_cap_gib,
                     1e9 / double(int64_t{1} << 30));
  replace_deprecated(app, bucket_mb_option, bucket_mb, bucket_mib, d.bucket_mib, 1.0);
  if (o.eval_every > 0 && o.eval_data.empty()) {
    throw InputError("--eval-every " + std::to_string(o.eval_every) +
                     " needs --eval-data (the held-out split to score)");
  }
  o.config_text = app.config_to_str(/*default_also=*/true, /*write_description=*/false);
  o.command_line = command_line(argc, argv);
  return o;
}

PerplexityToolOptions parse_perplexity(int argc, char** argv) {
  PerplexityToolOptions o;
  CLI::App app{"Perplexity of a LLaMA model (with --adapter, or merged) over an llt-tokenize "
               "dataset or a text file.",
               "llt-perplexity"};
  add_config_option(app);
  add_model_options(app, o.model);
  app.get_option("--tokenizer")
      ->description("SentencePiece model: tokenizes --text (default: tokenizer.model beside the "
                    "checkpoint); with --data, checked against the shards' tokenizer");
  auto* data = app.add_option("--data", o.data, "Dataset directory from llt-tokenize")
                   ->check(CLI::ExistingDirectory);
  auto* text = app.add_option("--text", o.text, "UTF-8 text file, tokenized whole with BOS")
                   ->check(CLI::ExistingFile)
                   ->excludes(data);
  app.add_option("--output", o.output, "Folder for perplexity.json (created if missing)")
      ->required();
  add_choice(app, "--tokens", o.tokens,
             "With --data: labels (response tokens, as trained) | all (every token after the "
             "first)")
      ->excludes(text);
  app.add_option("--window", o.window, "With --text: tokens per window (default: max_seq_len)")
      ->check(number_in(1))
      ->excludes(data);
  app.add_option("--stride", o.stride, "With --text: tokens between windows (default: --window)")
      ->check(number_in(1))
      ->excludes(data);
  app.add_option("--batch-size", o.batch_size, "Samples (or windows) per forward")
      ->check(number_in(1))
      ->capture_default_str();
  app.add_option("--per-sample", o.per_sample,
                 "JSONL file: index, tokens, nll_sum, mean_nll per sample (or window)");
  app.add_flag("--overwrite", o.overwrite, "Replace perplexity.json and the --per-sample file");
  parse_or_exit(app, argc, argv);
  if (o.data.empty() && o.text.empty()) {
    std::cerr << app.get_name() << ": error: give --data DIR or --text FILE\n";
    throw Exit{1};
  }
  o.command_line = command_line(argc, argv);
  return o;
}

ExportToolOptions parse_export(int argc, char** argv) {
  ExportToolOptions o;
  CLI::App app{"Write a model (a base, a base with --adapter merged, or a full fine-tuning "
               "--run) as a Hugging Face transformers folder or in Meta's layout.",
               "llt-export"};
  add_config_option(app);
  add_model_path(app, o.model);
  app.add_option("--adapter", o.adapter, "LoRA adapter folder (a run's adapter/) to merge in")
      ->check(CLI::ExistingDirectory);
  app.add_option("--run", o.run,
                 "Full fine-tuning run folder (its latest checkpoints/step-N) or a step-N folder; "
                 "the base's configuration comes from the run's config.toml or --model")
      ->check(CLI::ExistingDirectory);
  app.add_option("--tokenizer", o.tokenizer,
                 "SentencePiece model (default: tokenizer.model beside the checkpoint)")
      ->check(CLI::ExistingFile);
  app.add_option("--n-layers", o.n_layers, "Keep only the first N blocks (0: all)")
      ->check(number_in(0))
      ->capture_default_str();
  add_choice(app, "--format", o.format,
             "hf: a transformers LlamaForCausalLM folder; meta: params.json + consolidated.00.pth");
  auto dtypes = names_list<Dtype>();
  dtypes.insert(dtypes.begin(), "");  // "": as stored
  app.add_option_function<std::string>(
         "--dtype",
         [&o](const std::string& name) {
           o.dtype = name.empty() ? std::nullopt : value_of<Dtype>(name);
         },
         "dtype of the written tensors: fp32 | bf16 | fp16 (default: as the weights are stored)")
      ->check(CLI::IsMember(dtypes));
  app.add_option_function<std::string>(
         "--max-shard-size",
         [&o](const std::string& size) { o.max_shard_size = *parse_byte_size(size); },
         "Bytes of tensors per safetensors file, at most: 5GB (transformers' default; GB = 1e9 "
         "bytes), 500MB, 2GiB, or a number of bytes")
      ->check(CLI::Validator(
          [](std::string& size) -> std::string {
            if (parse_byte_size(size)) return "";
            return "must be a size of at least 1 byte such as 5GB, 500MB, 2GiB or 1000000 (GB = "
                   "1e9 bytes as in transformers, GiB = 2^30), got '" + size + "'";
          },
          "SIZE"))
      ->default_str("5GB");
  app.add_option("--output", o.output, "Folder to write (refused if it exists and is not empty)")
      ->required();
  app.add_flag("--overwrite", o.overwrite, "Replace an existing --output folder");
  app.add_option("--threads", o.threads, "CPU threads (0: SLURM_CPUS_PER_TASK, else all cores)")
      ->check(number_in(0))
      ->capture_default_str();
  parse_or_exit(app, argc, argv);
  o.command_line = command_line(argc, argv);
  return o;
}

ReportToolOptions parse_report(int argc, char** argv) {
  ReportToolOptions o;
  CLI::App app{"Tables (the seed's Table 1 and Table 2), plots and a before/after sheet from run "
               "folders (llt-finetune, llt-generate, llt-perplexity outputs).",
               "llt-report"};
  add_config_option(app);
  app.add_option("runs", o.runs, "Run folders (summary.json, metrics.jsonl, memory.jsonl, "
                 "generations.jsonl, perplexity.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--output", o.output, "Report folder: table1/table2 .md/.csv, before_after.md, "
                 "plots/")
      ->required();
  app.add_flag("--overwrite", o.overwrite, "Replace report files already in --output");
  app.add_flag("--no-plots", o.no_plots, "Write the tables and sheet only (no gnuplot needed)");
  app.add_option("--gnuplot", o.gnuplot, "gnuplot program (a name on PATH or a path)")
      ->capture_default_str();
  app.add_option("--gnuplot-timeout", o.gnuplot_timeout_s,
                 "Seconds gnuplot may take per plot before it is stopped (0: no limit)")
      ->check(number_in(0))
      ->capture_default_str();
  parse_or_exit(app, argc, argv);
  return o;
}

int tool_main(const char* tool, const std::function<int()>& body) {
  init_process();
  try {
    return body();
  } catch (const Exit& e) {
    return e.code;
  } catch (const std::exception& e) {
    return report_exception(tool, e);
  }
}

std::string command_line(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    static const char* kShellSafe =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=/.,:@%";
    if (arg.empty() || arg.find_first_not_of(kShellSafe) != std::string::npos) {
      // Single-quote it, writing ' as '\''.
      std::string quoted = "'";
      for (const char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      arg = quoted + "'";
    }
    line += (i == 0 ? "" : " ") + arg;
  }
  return line;
}

}  // namespace llt::tools
