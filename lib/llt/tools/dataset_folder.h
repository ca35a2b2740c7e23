// The dataset folders one llt-tokenize run writes (--output, or --output/NAME per --split), so
// that a failed or killed run never leaves a folder that looks finished and never damages the
// dataset it replaces. Each run has a generation, above every one found in the folder; its shards
// get new names (shard-g<generation>-NNNNN.h5) beside the old ones. commit() writes every
// manifest to manifest.json.tmp, renames them over manifest.json (the commit point: a reader sees
// the old dataset or the new one), and only then removes what no new manifest names: the old
// generation's shards, leftovers of killed runs, and datasets of splits not written again.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "llt/shards.h"

namespace llt::tools {

// An existing --output that is not an empty directory is refused unless `overwrite`. Throws
// InputError.
void check_output(const std::filesystem::path& root, bool overwrite);

class DatasetFolders {
 public:
  // Creates `root` and `dirs` (each `root` or a subfolder of it) where missing, and picks the
  // generation. Throws RuntimeError when a folder cannot be created.
  DatasetFolders(std::filesystem::path root, std::vector<std::filesystem::path> dirs);
  // Unless commit() succeeded: removes this generation's files and the folders created (if
  // empty), leaving the folder as it was.
  ~DatasetFolders();
  DatasetFolders(const DatasetFolders&) = delete;
  DatasetFolders& operator=(const DatasetFolders&) = delete;

  int64_t generation() const { return generation_; }

  // Publishes manifests[i] as dirs[i]/manifest.json, then removes what is stale (above). Throws
  // RuntimeError if a manifest cannot be written (nothing is published then).
  void commit(const std::vector<Manifest>& manifests);

 private:
  void remove_created();  // the folders this run made, if empty

  std::filesystem::path root_;
  std::vector<std::filesystem::path> dirs_;
  std::vector<std::filesystem::path> created_;  // folders this run made, parents first
  int64_t generation_ = 1;
  bool committed_ = false;
};

}  // namespace llt::tools
