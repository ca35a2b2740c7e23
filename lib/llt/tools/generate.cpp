#include "llt/tools/generate.h"

#include <iostream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "llt/alpaca.h"
#include "llt/errors.h"
#include "llt/generate.h"
#include "llt/io.h"
#include "llt/runtime.h"
#include "llt/tools/setup.h"
#include "llt/utf8.h"

namespace llt::tools {
namespace {

// Parses one JSONL line into a record; returns false if the line is not a JSON object.
bool parse_prompt_json(const std::string& line, const std::string& where, PromptRecord& record) {
  const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  auto field = [&](const char* key, std::string& out, bool required) {
    if (!j.contains(key)) {
      if (required) throw InputError(where + ": missing field '" + key + "'");
      return;
    }
    if (!j[key].is_string()) throw InputError(where + ": field '" + key + "' is not a string");
    out = j[key].get<std::string>();
  };
  if (j.contains("prompt")) {
    field("prompt", record.prompt, true);
  } else {
    field("instruction", record.prompt, true);
    field("input", record.input, false);
  }
  std::string template_name;
  field("template", template_name, false);
  if (!template_name.empty()) {
    record.prompt_template = value_of<PromptTemplate>(template_name);
    if (!record.prompt_template) {
      throw InputError(where + ": field 'template': expected none or alpaca, got '" +
                       template_name + "'");
    }
  }
  return true;
}

// The seed's prompt file (assets/data/seed_prompts.json): one JSON object whose "prompts" array
// holds strings or prompt records. nullopt if the file is not such an object.
std::optional<std::vector<PromptRecord>> parse_prompts_object(const std::string& text,
                                                              const std::string& path) {
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("prompts")) return std::nullopt;
  const auto& list = j["prompts"];
  if (!list.is_array() || list.empty()) {
    throw InputError(path + ": field 'prompts': expected a non-empty array of prompts");
  }
  std::vector<PromptRecord> records(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = path + ": prompts[" + std::to_string(i) + "]";
    if (list[i].is_string()) {
      records[i].prompt = list[i].get<std::string>();
    } else if (!parse_prompt_json(list[i].dump(), where, records[i])) {
      throw InputError(where + ": expected a string or a JSON object with \"prompt\"");
    }
  }
  return records;
}

std::string utf8_completion(const Tokenizer& tokenizer, const std::vector<int64_t>& prompt_ids,
                            const std::vector<int64_t>& ids) {
  // Decode prompt+completion and strip the decoded prompt, so the completion keeps the leading
  // space SentencePiece drops when a sequence is decoded on its own.
  std::vector<int32_t> all(prompt_ids.begin(), prompt_ids.end());
  const std::string prompt_text = tokenizer.decode(all);
  all.insert(all.end(), ids.begin(), ids.end());
  const std::string text = tokenizer.decode(all);
  if (text.compare(0, prompt_text.size(), prompt_text) == 0) return text.substr(prompt_text.size());
  std::vector<int32_t> only(ids.begin(), ids.end());
  return tokenizer.decode(only);
}

}  // namespace

std::vector<PromptRecord> read_prompts_file(const std::string& path) {
  const std::string text = read_file(path);
  check_utf8_text(text, path + " (--prompts-file)");  // a gzip or other binary file: refused
  if (auto records = parse_prompts_object(text, path)) return *records;
  std::istringstream in(text);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) lines.push_back(line);
  }
  if (lines.empty()) throw InputError(path + ": no prompts (the file is empty)");
  std::vector<PromptRecord> records(lines.size());
  // JSONL only if the first line is a JSON object; then every line must be one.
  if (!parse_prompt_json(lines[0], path + ":1", records[0])) {
    for (size_t i = 0; i < lines.size(); ++i) records[i].prompt = lines[i];
    return records;
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string where = path + ": record " + std::to_string(i + 1);
    if (!parse_prompt_json(lines[i], where, records[i])) {
      throw InputError(where + ": not a JSON object (the file's first line is JSONL)");
    }
  }
  return records;
}

std::string apply_template(const PromptRecord& record, PromptTemplate default_template) {
  if (record.prompt_template.value_or(default_template) == PromptTemplate::kAlpaca) {
    return format_alpaca_prompt(record.prompt, record.input);
  }
  if (!record.input.empty()) return record.prompt + "\n" + record.input;
  return record.prompt;
}

int run_generate(const GenerateToolOptions& options) {
  std::vector<PromptRecord> records;
  for (const auto& p : options.prompts) {
    check_utf8_text(p, "--prompt");
    records.push_back({p, "", std::nullopt});
  }
  if (!options.prompts_file.empty()) {
    auto from_file = read_prompts_file(options.prompts_file);
    records.insert(records.end(), from_file.begin(), from_file.end());
  }
  if (!options.output.empty()) refuse_existing(options.output, options.overwrite, "--output");

  ModelSetup setup = setup_model(options.model);
  auto& model = *setup.loaded.model;
  std::cerr << "llt-generate: " << format_name(setup.loaded.format) << " model "
            << options.model.model << ": " << setup.loaded.args.n_layers << " layers, dim "
            << setup.loaded.args.dim << ", " << model.args().num_parameters() << " parameters, "
            << dtype_name(setup.dtype) << " on " << setup.device << ", " << setup.threads
            << " threads, loaded in " << setup.load_seconds << " s\n";

  GenerateOptions gen;
  gen.sampling = options.sampling;
  gen.kv_cache = options.kv_cache;
  // EOS ends a completion; so does BOS, which llama2.c-trained models emit between documents.
  gen.stop_ids = {setup.tokenizer.eos_id(), setup.tokenizer.bos_id()};

  // Every record says where it came from (as perplexity.json does).
  nlohmann::json provenance = model_provenance(options.model, setup);
  provenance["tokenizer"] = find_tokenizer(options.model).string();  // the one used
  provenance["sampling"] = {{"temperature", gen.sampling.temperature},
                            {"top_k", gen.sampling.top_k},
                            {"top_p", gen.sampling.top_p},
                            {"seed", gen.sampling.seed},
                            {"max_new_tokens", gen.sampling.max_new_tokens}};
  provenance["template"] = name_of(options.prompt_template);
  provenance["bos"] = options.bos;
  provenance["batch_size"] = options.batch_size;
  provenance["command_line"] = options.command_line;

  std::ostringstream jsonl;
  int64_t total_tokens = 0;
  double total_seconds = 0;
  for (size_t first = 0; first < records.size(); first += options.batch_size) {
    const size_t last = std::min(records.size(), first + static_cast<size_t>(options.batch_size));
    std::vector<std::string> texts;
    std::vector<std::vector<int64_t>> prompt_ids;
    for (size_t i = first; i < last; ++i) {
      texts.push_back(apply_template(records[i], options.prompt_template));
      const auto ids = setup.tokenizer.encode(texts.back(), options.bos, /*eos=*/false);
      prompt_ids.emplace_back(ids.begin(), ids.end());
    }
    const auto result = generate(model, prompt_ids, gen);
    total_seconds += result.seconds;
    for (size_t i = 0; i < result.sequences.size(); ++i) {
      const auto& seq = result.sequences[i];
      const std::string completion = utf8_completion(setup.tokenizer, seq.prompt_ids, seq.ids);
      total_tokens += static_cast<int64_t>(seq.ids.size());
      std::cout << texts[i] << completion << "\n"
                << "----------------------------------------------------------------\n";
      nlohmann::json record = {
          {"prompt", texts[i]},
          {"completion", completion},
          {"prompt_ids", seq.prompt_ids},
          {"ids", seq.ids},
          {"stopped", seq.stopped},
          // This prompt's tokens over its batch's wall time (prefill included).
          {"tokens_per_s", result.seconds > 0 ? seq.ids.size() / result.seconds : 0.0},
          {"kv_cache", gen.kv_cache},
      };
      record.update(provenance);
      jsonl << record.dump(-1, ' ', /*ensure_ascii=*/false,
                           nlohmann::json::error_handler_t::replace)
            << "\n";
    }
  }
  std::cerr << "llt-generate: " << total_tokens << " tokens in " << total_seconds << " s ("
            << (total_seconds > 0 ? total_tokens / total_seconds : 0.0) << " tokens/s, kv-cache "
            << name_of(options.kv_cache) << ")\n";
  if (!options.output.empty()) write_file_atomic(options.output, jsonl.str(), options.overwrite);
  return 0;
}

}  // namespace llt::tools
