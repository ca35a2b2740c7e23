#include "llt/tools/run_lock.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "llt/errors.h"
#include "llt/io.h"

namespace llt::tools {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "unknown";
  return name;
}

// A process's start time in clock ticks since boot (/proc/PID/stat field 22), or -1: with the
// pid, it tells the process from a later one that reuses the number.
int64_t process_start(int64_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t end = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (end == std::string::npos) return -1;
  std::istringstream fields(stat.substr(end + 1));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) return std::strtoll(field.c_str(), nullptr, 10);
  }
  return -1;
}

bool process_alive(int64_t pid, int64_t start) {
  if (pid <= 0) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  const int64_t now_start = process_start(pid);
  return start < 0 || now_start < 0 || now_start == start;
}

std::string utc_time(double unix_s) {
  const auto t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// "pid 12 on host n1 (SLURM job 34), started 2026-12-02T10:00:00Z, refreshed 5 s ago"
std::string describe(const json& h, double now) {
  std::ostringstream out;
  out << "pid " << h.value("pid", int64_t{-1}) << " on host " << h.value("host", std::string("?"));
  const std::string job = h.value("slurm_job_id", std::string());
  if (!job.empty()) out << " (SLURM job " << job << ")";
  out << ", started " << h.value("started", std::string("?")) << ", refreshed "
      << static_cast<int64_t>(std::max(0.0, now - h.value("refreshed_unix", 0.0))) << " s ago";
  return out.str();
}

// The lock file's record, or a null json when it is gone or not (yet) a whole record.
json read_record(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return json();
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const json j = json::parse(text, nullptr, false);
  return j.is_object() ? j : json();
}

// Writes `record` into the open file `fd` and closes it. Throws RuntimeError naming `path`.
void write_record(int fd, const json& record, const fs::path& path) {
  const std::string text = record.dump(1) + "\n";
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      close(fd);
      throw RuntimeError(path.string() + ": cannot write the run folder's lock: " + why);
    }
    done += static_cast<size_t>(n);
  }
  if (close(fd) != 0) {
    throw RuntimeError(path.string() + ": cannot write the run folder's lock: " +
                       std::strerror(errno));
  }
}

}  // namespace

json RunLock::this_process(double started_unix) {
  const char* job = std::getenv("SLURM_JOB_ID");
  const double now = now_unix();
  return {{"pid", static_cast<int64_t>(getpid())},
          {"pid_start", process_start(getpid())},
          {"host", host_name()},
          {"slurm_job_id", job != nullptr ? job : ""},
          {"started", utc_time(started_unix)},
          {"started_unix", started_unix},
          {"refreshed", utc_time(now)},
          {"refreshed_unix", now}};
}

bool RunLock::is_stale(const json& holder, double now, std::string& reason) {
  const double age = now - holder.value("refreshed_unix", 0.0);
  if (holder.value("host", std::string()) == host_name()) {
    if (!process_alive(holder.value("pid", int64_t{-1}), holder.value("pid_start", int64_t{-1}))) {
      reason = "its process is gone";
      return true;
    }
    return false;  // alive here: however long since its refresh, it is running
  }
  if (age > kStaleSeconds) {
    std::ostringstream out;
    out << "not refreshed for " << static_cast<int64_t>(age) << " s (stale after "
        << static_cast<int64_t>(kStaleSeconds) << " s)";
    reason = out.str();
    return true;
  }
  return false;
}

RunLock::RunLock(const fs::path& dir, bool must_be_new) : dir_(dir), path_(dir / "run.lock") {
  std::error_code ec;
  if (must_be_new) {
    if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), ec);
    if (mkdir(dir.c_str(), 0755) != 0) {
      if (errno == EEXIST) {
        throw InputError(dir.string() + ": the run folder exists (--output); pass --resume auto "
                         "to continue it, or choose another folder");
      }
      throw RuntimeError(dir.string() + ": cannot create the run folder: " + std::strerror(errno));
    }
    created_dir_ = true;
  } else if (!fs::exists(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) throw RuntimeError(dir.string() + ": cannot create the run folder: " + ec.message());
    created_dir_ = true;
  }
  const double started = now_unix();
  for (int attempt = 0; attempt < 5; ++attempt) {
    const int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
      record_ = this_process(started);
      write_record(fd, record_, path_);
      refresher_ = std::thread([this] { refresh_loop(); });
      return;
    }
    if (errno != EEXIST) {
      throw RuntimeError(path_.string() + ": cannot create the run folder's lock: " +
                         std::strerror(errno));
    }
    const json holder = read_record(path_);
    if (holder.is_null()) {
      // Being written by its creator this instant, or a torn write long ago: judge by its age.
      struct stat st {};
      if (stat(path_.c_str(), &st) != 0) continue;  // gone: try again
      if (now_unix() - static_cast<double>(st.st_mtime) < kStaleSeconds) {
        if (attempt + 1 < 5) {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          continue;
        }
        throw InputError(path_.string() + ": the run folder is locked by another llt-finetune "
                         "(its lock is not readable yet); wait for it, or remove the lock if no "
                         "job uses this folder");
      }
    }
    std::string reason = "it is not a lock record";
    if (!holder.is_null() && !is_stale(holder, now_unix(), reason)) {
      throw InputError(path_.string() + ": the run folder is in use by " +
                       describe(holder, now_unix()) +
                       "; wait for that job to end (two jobs must not train one run folder)");
    }
    std::cerr << "llt-finetune: warning: " << path_.string() << ": taking over the lock of "
              << (holder.is_null() ? std::string("an unknown process") : describe(holder, now_unix()))
              << ": " << reason << "\n";
    // Move the stale lock aside under a name of our own: of two processes taking it over, one
    // rename succeeds. Then check it is the lock judged stale (not one just taken by another).
    const fs::path aside =
        path_.string() + ".stale." + host_name() + "." + std::to_string(getpid());
    if (rename(path_.c_str(), aside.c_str()) != 0) continue;
    if (read_record(aside) != holder) {
      if (link(aside.c_str(), path_.c_str()) == 0) fs::remove(aside, ec);
      continue;
    }
    fs::remove(aside, ec);
  }
  throw InputError(path_.string() + ": cannot take the run folder's lock (other processes keep "
                   "taking it); is the job running twice?");
}

RunLock::~RunLock() {
  {
    const std::lock_guard<std::mutex> guard(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (refresher_.joinable()) refresher_.join();
  std::error_code ec;
  if (still_ours()) fs::remove(path_, ec);
  if (created_dir_ && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
}

bool RunLock::still_ours() const {
  const json now = read_record(path_);
  return !now.is_null() && now.value("pid", int64_t{-1}) == record_.value("pid", int64_t{-2}) &&
         now.value("host", std::string()) == record_.value("host", std::string()) &&
         now.value("started_unix", 0.0) == record_.value("started_unix", 1.0);
}

void RunLock::refresh_loop() {
  std::unique_lock<std::mutex> guard(mutex_);
  const auto period = std::chrono::duration<double>(kRefreshSeconds);
  while (!wake_.wait_for(guard, period, [this] { return stopping_; })) {
    if (!still_ours()) {
      std::cerr << "llt-finetune: warning: " << path_.string()
                << ": the run folder's lock was taken over by another process; this run no "
                   "longer holds it\n";
      return;
    }
    record_["refreshed_unix"] = now_unix();
    record_["refreshed"] = utc_time(record_["refreshed_unix"].get<double>());
    const fs::path tmp = path_.string() + "." + std::to_string(getpid()) + ".tmp";
    try {
      const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) throw RuntimeError(tmp.string() + ": " + std::strerror(errno));
      write_record(fd, record_, tmp);
      if (rename(tmp.c_str(), path_.c_str()) != 0) {
        throw RuntimeError(path_.string() + ": " + std::strerror(errno));
      }
    } catch (const RuntimeError& e) {  // a full disk now and then: the next refresh may work
      std::cerr << "llt-finetune: warning: cannot refresh the run folder's lock: " << e.what()
                << "\n";
      std::error_code ec;
      fs::remove(tmp, ec);
    }
  }
}

}  // namespace llt::tools
