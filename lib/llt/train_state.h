// The training state of a run at an optimizer step, as `checkpoints/step-N/` holds it
// (DESIGN.md "Resume"): trainable.safetensors (the trained tensors), optimizer.safetensors (AdamW's
// moments) and state.json ("llt-train-state-v1": step, data position, loss scale, counters and
// the CPU generator's state). Written as step-N.tmp/ and renamed, so a killed write leaves the
// previous state the latest.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llt/amp.h"
#include "llt/dataset.h"
#include "llt/distributed.h"
#include "llt/optim.h"

namespace llt {

struct TrainState {
  int64_t step = 0;       // optimizer steps done
  DataPosition data;      // the sampler's position after `step`
  LossScalerState scaler;
  double elapsed_s = 0;   // training wall time so far
  double saving_s = 0;    // of elapsed_s: writing training states and adapters
  int64_t tokens = 0;
  int64_t label_tokens = 0;
  int64_t samples = 0;      // real samples: wrap-around repeats are not counted
  int64_t activations = 0;  // the most bytes a micro-batch's forward held (Trainer)
  std::string data_sha256;  // samples_sha256 of the dataset's manifest ("": not recorded)
};

// The newest `step-N` folder in `checkpoints` (a finished write: no ".tmp"; N digits only, other
// names are not training states), or an empty path.
std::filesystem::path latest_train_state(const std::filesystem::path& checkpoints);

// A uint8 tensor (a generator's state) as lowercase hex: state.json's rng_state.
std::string hex_bytes(const at::Tensor& bytes);

// Writes checkpoints/step-<state.step>/ and then removes every older folder in `checkpoints`.
// state.json records the sha256 of each tensor file ("files") and state.data_sha256.
// `rank_rng_states`: in a data-parallel run, every rank's CPU generator state (hex_bytes) in rank order;
// empty for one process. Only the CPU generator is saved: on CPU each rank resumes its own
// dropout stream exactly, but CUDA generators (dropout on a GPU) are not restored, so a resumed
// GPU run with dropout is not bitwise the uninterrupted one.
void save_train_state(const std::filesystem::path& checkpoints, const TrainState& state,
                      const NamedParameters& trainable, const AdamW& optimizer, int world_size,
                      const std::vector<std::string>& rank_rng_states);

// The trained tensors of a step-N folder, DIR/trainable.safetensors (the parameters that
// trained, under their Meta or LoRA names), checked against the sha256 state.json records.
// Throws InputError naming the file when state.json is not an llt training state or the file is
// missing or differs.
std::filesystem::path trained_weights_file(const std::filesystem::path& dir);

// Reads a step-N folder into `trainable` (copied in place), `optimizer` and this rank's CPU
// generator, and returns the state. Every rank of a data-parallel run reads the folder rank 0
// wrote. Throws InputError naming the file on another format, another world size, a tensor file
// whose sha256 is not the one state.json records, a missing or mis-shaped tensor, a missing
// field or a generator state of the wrong size. (States written before checksums were recorded
// have no "files" and are read unchecked.)
TrainState load_train_state(const std::filesystem::path& dir, const NamedParameters& trainable,
                            AdamW& optimizer, const DistributedConfig& dist);

}  // namespace llt
