#include "llt/train_state.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/safetensors.h"
#include "llt/sha256.h"

namespace llt {
namespace fs = std::filesystem;

namespace {

at::Tensor from_hex(const std::string& hex, const std::string& where) {
  if (hex.size() % 2 != 0) throw InputError(where + ": rng_state is not hex");
  auto t = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  auto* p = t.data_ptr<uint8_t>();
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw InputError(where + ": rng_state is not hex");
  };
  for (size_t i = 0; i < hex.size(); i += 2) p[i / 2] = nibble(hex[i]) << 4 | nibble(hex[i + 1]);
  return t;
}

// The tensor files of a state, checksummed in state.json's "files".
const char* const kTensorFiles[] = {"trainable.safetensors", "optimizer.safetensors"};

// Whether `name` is "step-" and digits only (a finished write).
bool is_state_name(const std::string& name) {
  return name.size() > 5 && name.size() <= 5 + 18 && name.rfind("step-", 0) == 0 &&
         std::all_of(name.begin() + 5, name.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; });
}

// Tensor file `name` against the sha256 in state.json's "files" (`j`; none recorded: an older
// state, read unchecked).
void verify_file(const fs::path& dir, const nlohmann::json& j, const std::string& where,
                 const std::string& name) {
  if (!j.contains("files")) return;
  const auto& files = j.at("files");
  if (!files.is_object()) throw InputError(where + ": field 'files' is not an object");
  if (!files.contains(name) || !files.at(name).is_string()) {
    throw InputError(where + ": field 'files' has no sha256 for " + name);
  }
  const fs::path path = dir / name;
  if (!fs::exists(path)) throw InputError(path.string() + ": missing (listed in " + where + ")");
  const std::string actual = sha256_file(path);
  if (actual != files.at(name).get<std::string>()) {
    throw InputError(path.string() + ": sha256 " + actual + " is not the " +
                     files.at(name).get<std::string>() + " recorded in " + where +
                     " (the file changed or is corrupt after it was written)");
  }
}

// state.json of a step-N folder, checked to be an llt training state.
nlohmann::json read_state_json(const fs::path& dir) {
  const fs::path state_file = dir / "state.json";
  const auto j = nlohmann::json::parse(read_file(state_file), nullptr, false);
  if (!j.is_object() || j.value("format", "") != "llt-train-state-v1") {
    throw InputError(state_file.string() + ": not an llt training state (format)");
  }
  return j;
}

}  // namespace

fs::path latest_train_state(const fs::path& checkpoints) {
  fs::path best;
  int64_t best_step = -1;
  if (!fs::is_directory(checkpoints)) return best;
  for (const auto& entry : fs::directory_iterator(checkpoints)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !is_state_name(name)) continue;
    const int64_t step = std::stoll(name.substr(5));
    if (step > best_step) best_step = step, best = entry.path();
  }
  return best;
}

std::string hex_bytes(const at::Tensor& bytes) {
  static const char* digits = "0123456789abcdef";
  const auto* p = bytes.contiguous().data_ptr<uint8_t>();
  std::string hex;
  for (int64_t i = 0; i < bytes.numel(); ++i) {
    hex += digits[p[i] >> 4];
    hex += digits[p[i] & 15];
  }
  return hex;
}

void save_train_state(const fs::path& checkpoints, const TrainState& state,
                      const NamedParameters& trainable, const AdamW& optimizer, int world_size,
                      const std::vector<std::string>& rank_rng_states) {
  const fs::path final_dir = checkpoints / ("step-" + std::to_string(state.step));
  const fs::path tmp = final_dir.string() + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, p] : trainable) tensors.emplace_back(name, p.detach().cpu());
  write_safetensors(tmp / "trainable.safetensors", tensors, {});
  optimizer.save(tmp / "optimizer.safetensors");
  nlohmann::json j = {
      {"format", "llt-train-state-v1"},
      {"world_size", world_size},  // the cursor counts this many ranks' batches
      {"step", state.step},
      {"epoch", state.data.epoch},
      {"cursor", state.data.cursor},
      {"scale", state.scaler.scale},
      {"good_steps", state.scaler.good_steps},
      {"skipped_steps", state.scaler.skipped_steps},
      {"elapsed_s", state.elapsed_s},
      {"saving_s", state.saving_s},
      {"tokens", state.tokens},
      {"label_tokens", state.label_tokens},
      {"samples", state.samples},
      {"activations", state.activations},
      {"rng_state", hex_bytes(at::detail::getDefaultCPUGenerator().get_state())},
  };
  if (!rank_rng_states.empty()) j["rank_rng_states"] = rank_rng_states;
  if (!state.data_sha256.empty()) j["data_sha256"] = state.data_sha256;
  for (const char* name : kTensorFiles) j["files"][name] = sha256_file(tmp / name);
  write_file_atomic(tmp / "state.json", j.dump(1), /*overwrite=*/true);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  for (const auto& entry : fs::directory_iterator(checkpoints)) {  // keep only the newest
    if (entry.path() != final_dir) fs::remove_all(entry.path());
  }
}

fs::path trained_weights_file(const fs::path& dir) {
  const auto j = read_state_json(dir);
  verify_file(dir, j, (dir / "state.json").string(), kTensorFiles[0]);
  return dir / kTensorFiles[0];
}

TrainState load_train_state(const fs::path& dir, const NamedParameters& trainable,
                            AdamW& optimizer, const DistributedConfig& dist) {
  const fs::path state_file = dir / "state.json";
  const auto j = read_state_json(dir);
  const int saved_world = j.value("world_size", 1);
  if (saved_world != dist.world_size) {
    throw InputError(state_file.string() + ": world_size " + std::to_string(saved_world) +
                     ", this run has " + std::to_string(dist.world_size) +
                     " processes; resume with the same number (the data position counts "
                     "per-rank batches)");
  }
  for (const char* name : kTensorFiles) verify_file(dir, j, state_file.string(), name);
  SafetensorsFile reader(dir / "trainable.safetensors");
  at::NoGradGuard no_grad;
  for (const auto& [name, p] : trainable) {
    const auto saved = reader.read(name);  // InputError naming the key if missing
    if (saved.sizes() != p.sizes()) {
      throw InputError((dir / "trainable.safetensors").string() + ": " + name + " has shape " +
                       c10::str(saved.sizes()) + ", the model expects " + c10::str(p.sizes()));
    }
    p.copy_(saved);
  }
  optimizer.load(dir / "optimizer.safetensors");
  TrainState state;
  try {
    state.step = j.at("step");
    state.data = {j.at("epoch"), j.at("cursor")};
    state.scaler = {j.at("scale"), j.at("good_steps"), j.at("skipped_steps")};
    state.elapsed_s = j.at("elapsed_s");
    state.saving_s = j.value("saving_s", 0.0);
    state.tokens = j.at("tokens");
    state.label_tokens = j.at("label_tokens");
    state.samples = j.at("samples");
    state.activations = j.value("activations", int64_t{0});  // older checkpoints: measured anew
    state.data_sha256 = j.value("data_sha256", std::string());
    const std::string rng = dist.world_size > 1
                                ? j.at("rank_rng_states").at(dist.rank).get<std::string>()
                                : j.at("rng_state").get<std::string>();
    auto generator = at::detail::getDefaultCPUGenerator();
    try {
      generator.set_state(from_hex(rng, state_file.string()));
    } catch (const c10::Error& e) {
      const std::string what = e.what_without_backtrace();
      throw InputError(state_file.string() + ": field '" +
                       (dist.world_size > 1 ? "rank_rng_states" : "rng_state") +
                       "' is not a generator state (" + what.substr(0, what.find('\n')) + ")");
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError(state_file.string() + ": " + e.what());
  }
  return state;
}

}  // namespace llt
