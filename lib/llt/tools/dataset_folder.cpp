#include "llt/tools/dataset_folder.h"

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <system_error>

#include "llt/errors.h"
#include "llt/io.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kManifestTmp = "manifest.json.tmp";

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// The entries of `dir` (none if it cannot be listed).
std::vector<fs::path> entries(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) out.push_back(entry.path());
  return out;
}

// Whether `dir` holds llt-tokenize output (a manifest or shard files).
bool is_dataset_dir(const fs::path& dir) {
  for (const auto& path : entries(dir)) {
    const std::string name = path.filename().string();
    if (starts_with(name, kManifest) || shard_file_generation(name) >= 0) return true;
  }
  return false;
}

// The highest generation in `dir`: its manifest's and its shard files' (leftovers included).
int64_t highest_generation(const fs::path& dir) {
  int64_t g = 0;
  std::error_code ec;
  if (fs::exists(dir / kManifest, ec)) {
    try {
      g = read_manifest(dir).generation;
    } catch (const InputError&) {  // unreadable: it is replaced anyway
    }
  }
  for (const auto& path : entries(dir)) {
    g = std::max(g, shard_file_generation(path.filename().string()));
  }
  return g;
}

// Removes the shard files of `dir` (llt's names only, shard_file_generation) that `keep` does not
// name, and the temp manifest. Without `keep`, the manifest goes too, first, so the folder stops
// looking finished. Other files are the user's and stay.
void remove_stale(const fs::path& dir, const Manifest* keep) {
  std::error_code ec;
  std::set<std::string> named;
  if (keep != nullptr) {
    for (const auto& s : keep->shards) named.insert(fs::path(s.file).lexically_normal().string());
  } else {
    fs::remove(dir / kManifest, ec);
  }
  for (const auto& path : entries(dir)) {
    const std::string name = path.filename().string();
    if ((shard_file_generation(name) >= 0 && named.count(name) == 0) || name == kManifestTmp) {
      fs::remove(path, ec);
    }
  }
}

}  // namespace

void check_output(const fs::path& root, bool overwrite) {
  std::error_code ec;
  if (!fs::exists(root, ec)) return;
  if (!fs::is_directory(root, ec)) {
    throw InputError(root.string() + ": exists and is not a directory (--output)");
  }
  if (!overwrite && !fs::is_empty(root, ec)) {
    throw InputError(root.string() + ": already exists and is not empty (--output); pass " +
                     "--overwrite to replace the dataset in it");
  }
}

DatasetFolders::DatasetFolders(fs::path root, std::vector<fs::path> dirs)
    : root_(std::move(root)), dirs_(std::move(dirs)) {
  std::error_code ec;
  std::vector<fs::path> wanted = {root_};
  wanted.insert(wanted.end(), dirs_.begin(), dirs_.end());
  for (const fs::path& dir : wanted) {
    if (fs::exists(dir, ec)) continue;
    fs::create_directories(dir, ec);
    if (ec) {
      remove_created();
      throw RuntimeError(dir.string() + ": cannot create the directory: " + ec.message());
    }
    created_.push_back(dir);
  }
  int64_t highest = highest_generation(root_);
  for (const fs::path& path : entries(root_)) {
    if (fs::is_directory(path, ec)) highest = std::max(highest, highest_generation(path));
  }
  generation_ = highest + 1;
}

DatasetFolders::~DatasetFolders() {
  if (committed_) return;
  std::error_code ec;
  for (const fs::path& dir : dirs_) {
    for (const auto& path : entries(dir)) {
      const std::string name = path.filename().string();
      if (shard_file_generation(name) == generation_ || name == kManifestTmp) fs::remove(path, ec);
    }
  }
  remove_created();
}

void DatasetFolders::remove_created() {
  std::error_code ec;
  for (auto it = created_.rbegin(); it != created_.rend(); ++it) {
    if (fs::is_empty(*it, ec)) fs::remove(*it, ec);
  }
}

void DatasetFolders::commit(const std::vector<Manifest>& manifests) {
  if (manifests.size() != dirs_.size()) {
    throw RuntimeError(root_.string() + ": " + std::to_string(manifests.size()) +
                       " manifests for " + std::to_string(dirs_.size()) + " dataset folders");
  }
  // Every manifest to its temp file first: a full disk fails here, with nothing published.
  for (size_t i = 0; i < dirs_.size(); ++i) {
    write_file(dirs_[i] / kManifestTmp, manifest_json(manifests[i]));
  }
  // The renames publish the folders one by one; should one fail, the ones before are put back.
  std::vector<std::optional<std::string>> previous;
  std::error_code ec;
  for (size_t i = 0; i < dirs_.size(); ++i) {
    const fs::path path = dirs_[i] / kManifest;
    std::optional<std::string> old;
    try {
      if (fs::exists(path, ec)) old = read_file(path);
    } catch (const InputError&) {  // unreadable: nothing to put back
    }
    fs::rename(dirs_[i] / kManifestTmp, path, ec);
    if (ec) {
      for (size_t k = 0; k < i; ++k) {
        try {
          if (previous[k]) {
            write_file_atomic(dirs_[k] / kManifest, *previous[k], /*overwrite=*/true);
          } else {
            fs::remove(dirs_[k] / kManifest);
          }
        } catch (const std::exception&) {  // best effort: the first error is the one reported
        }
      }
      throw RuntimeError(path.string() + ": cannot rename " + kManifestTmp +
                         " into place: " + ec.message());
    }
    previous.push_back(std::move(old));
  }
  committed_ = true;
  // Only now: the old generation's shards, leftovers, and old datasets not written again.
  for (size_t i = 0; i < dirs_.size(); ++i) remove_stale(dirs_[i], &manifests[i]);
  const auto is_new = [&](const fs::path& dir) {
    return std::find(dirs_.begin(), dirs_.end(), dir) != dirs_.end();
  };
  if (!is_new(root_)) remove_stale(root_, nullptr);
  for (const fs::path& path : entries(root_)) {
    if (!fs::is_directory(path, ec) || is_new(path) || !is_dataset_dir(path)) continue;
    remove_stale(path, nullptr);
    if (fs::is_empty(path, ec)) fs::remove(path, ec);
  }
}

}  // namespace llt::tools
