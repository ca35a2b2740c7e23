// The run folder's lock (DESIGN.md's run folder): one llt-finetune at a time in a run folder, so
// a job submitted twice cannot interleave two trainings' checkpoints and metrics.jsonl.
//
// `run.lock` is created with O_EXCL (an atomic create on local and network file systems, where
// flock may be node-local) and holds who holds it: pid, the process's start time, host, SLURM job
// id, when it started and when it was last refreshed. The holder refreshes it every
// kRefreshSeconds from a background thread and removes it when the RunLock is destroyed. A lock
// is stale, and taken over with a warning, when its host is this one and its process is gone, or
// when its last refresh is older than kStaleSeconds (a job killed or requeued on another node).
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

namespace llt::tools {

class RunLock {
 public:
  static constexpr double kRefreshSeconds = 30;
  static constexpr double kStaleSeconds = 300;

  // Locks `dir`, creating it (and its parents) when it does not exist. `must_be_new`: the folder
  // must not exist yet (created with mkdir, which fails for a second process). Throws InputError
  // (exit 1) naming the holder when another live process holds the lock, or naming the folder
  // when it must be new and exists; RuntimeError when the lock cannot be written.
  RunLock(const std::filesystem::path& dir, bool must_be_new);
  // Stops refreshing and removes the lock (if it is still this process's); removes the folder
  // if this RunLock created it and it is empty.
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  const std::filesystem::path& path() const { return path_; }
  bool created() const { return created_dir_; }  // this RunLock created the folder

  // The lock record of this process now (also what `path()` holds).
  static nlohmann::json this_process(double started_unix);
  // Whether the lock record `holder` is stale as seen from this process at `now_unix`, with why
  // in `reason`.
  static bool is_stale(const nlohmann::json& holder, double now_unix, std::string& reason);

 private:
  void refresh_loop();
  bool still_ours() const;

  std::filesystem::path dir_;
  std::filesystem::path path_;
  bool created_dir_ = false;
  nlohmann::json record_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread refresher_;
};

}  // namespace llt::tools
