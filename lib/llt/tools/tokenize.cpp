#include "llt/tools/tokenize.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <exception>
#include <iostream>
#include <mutex>
#include <set>
#include <thread>

#include "llt/encode_cache.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/runtime.h"
#include "llt/sha256.h"
#include "llt/shards.h"
#include "llt/tools/dataset_folder.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

constexpr const char* kDefaultInput = "data/alpaca/alpaca_data_first_5000.json";
// Records a worker takes at a time: small enough to balance 2-64 threads on 5,000 records.
constexpr size_t kRecordsPerTask = 64;

int64_t parse_index(const std::string& text, const std::string& spec) {
  size_t used = 0;
  long long value = -1;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < 0) {
    throw InputError("--split '" + spec + "': '" + text + "' is not a record index (>= 0)");
  }
  return value;
}

std::vector<SplitSpec> selections(const TokenizeToolOptions& o, int64_t n,
                                  const std::string& file) {
  std::vector<SplitSpec> out;
  if (!o.splits.empty()) {
    if (o.skip != 0 || o.first != 0) {
      throw InputError(
          "--split takes absolute record ranges; do not combine it with --skip/--first");
    }
    std::set<std::string> names;
    for (const auto& spec : o.splits) {
      out.push_back(parse_split(spec));
      if (!names.insert(out.back().name).second) {
        throw InputError("--split '" + spec + "': the name '" + out.back().name +
                         "' is used twice");
      }
    }
    // A record in two splits (train and eval) would leak one into the other.
    for (size_t i = 0; i < out.size(); ++i) {
      for (size_t k = i + 1; k < out.size(); ++k) {
        const int64_t start = std::max(out[i].start, out[k].start);
        const int64_t end = std::min(out[i].end, out[k].end);
        if (start < end) {
          throw InputError("--split '" + o.splits[i] + "' and --split '" + o.splits[k] +
                           "' overlap: records [" + std::to_string(start) + ", " +
                           std::to_string(end) + ") would be in both '" + out[i].name + "' and '" +
                           out[k].name + "'");
        }
      }
    }
  } else {
    out.push_back({"", o.skip, o.first > 0 ? o.skip + o.first : n});
  }
  for (const auto& s : out) {
    if (s.end > n || s.start >= n) {
      throw InputError(file + ": records [" + std::to_string(s.start) + ", " +
                       std::to_string(s.end) + ") were asked for (--skip/--first/--split) but " +
                       "the file has " + std::to_string(n) + " records");
    }
  }
  return out;
}

std::string thousands(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > (v < 0 ? 1 : 0); i -= 3) s.insert(i, ",");
  return s;
}

// Everything the shards of one split share.
struct Context {
  const TokenizeToolOptions* options = nullptr;
  const Tokenizer* tokenizer = nullptr;
  std::string input;
  std::string input_format;
  std::string source_sha256;
  std::string command_line;
};

void flush_shard(const fs::path& dir, ShardData& data, Manifest& m) {
  if (data.size() == 0) return;
  ShardAttributes attributes = m.attributes;
  attributes.first_index = data.source_indices.front();
  const std::string name = shard_file_name(m.generation, static_cast<int64_t>(m.shards.size()));
  write_shard(dir / name, data, attributes);
  m.shards.push_back(
      {name, data.size(), data.tokens(), attributes.first_index, sha256_file(dir / name)});
  data = ShardData{};
}

// Writes one split's shards (of run `generation`); returns its manifest, for
// DatasetFolders::commit to publish.
Manifest write_split(const Context& c, const SplitSpec& split, const fs::path& dir,
                     int64_t generation, const AlpacaFile& file,
                     const std::vector<int64_t>& sample_of,
                     const std::vector<AlpacaSample>& samples) {
  const TokenizeToolOptions& o = *c.options;
  Manifest m;
  m.generation = generation;
  m.attributes.tokenizer_sha256 = c.tokenizer->sha256();
  m.attributes.vocab_size = c.tokenizer->vocab_size();
  m.attributes.bos_id = c.tokenizer->bos_id();
  m.attributes.eos_id = c.tokenizer->eos_id();
  m.attributes.max_len = o.max_len;
  m.attributes.source_sha256 = c.source_sha256;
  m.input = c.input;
  m.input_format = c.input_format;
  m.tokenizer = o.tokenizer;
  m.split = split.name;
  m.start = split.start;
  m.end = split.end;
  m.records = split.end - split.start;
  m.command_line = c.command_line;
  for (const BadRecord& bad : file.bad) {
    if (bad.index >= split.start && bad.index < split.end) m.bad_records.push_back(bad);
  }
  m.skipped_bad_records = static_cast<int64_t>(m.bad_records.size());
  ShardData shard;
  for (int64_t index = split.start; index < split.end; ++index) {
    if (sample_of[index] < 0) continue;  // a bad record, listed above
    const AlpacaSample& s = samples[sample_of[index]];
    m.prompt_not_prefix += s.prompt_is_prefix ? 0 : 1;
    if (!s.has_label()) {
      ++m.dropped_no_label;
      continue;
    }
    m.truncated += s.truncated ? 1 : 0;
    const auto length = static_cast<int64_t>(s.ids.size());
    ++m.samples;
    m.tokens += length;
    m.source_tokens += s.source_length;
    m.length_histogram.add(length);
    shard.add(s.ids, s.source_length, index);
    if (shard.size() >= o.samples_per_shard) flush_shard(dir, shard, m);
  }
  flush_shard(dir, shard, m);
  m.label_tokens = m.tokens - m.source_tokens;
  return m;
}

void print_split(const Manifest& m, const fs::path& dir) {
  std::cerr << "llt-tokenize: " << (m.split.empty() ? "" : m.split + ": ") << "records [" << m.start
            << ", " << m.end << "): " << thousands(m.samples) << " samples, " << thousands(m.tokens)
            << " tokens (" << thousands(m.label_tokens) << " label), " << m.truncated
            << " truncated to " << m.attributes.max_len << ", " << m.dropped_no_label
            << " dropped with no label token, " << m.skipped_bad_records
            << " bad records skipped -> " << dir.string() << " (" << m.shards.size()
            << (m.shards.size() == 1 ? " shard)" : " shards)") << "\n";
}

void check_options(const TokenizeToolOptions& o) {
  if (o.max_len < 2) throw InputError("--max-len must be at least 2 (BOS and one token)");
  if (o.samples_per_shard < 1) throw InputError("--samples-per-shard must be at least 1");
  if (o.max_record_bytes < 1) throw InputError("--max-record-bytes must be at least 1");
}

// The selected records that are not bad, in order; sample_of[i] is record i's position in that
// list (-1 if it is not there). A bad selected record throws under --on-bad-record fail.
std::vector<int64_t> records_to_tokenize(const AlpacaFile& file,
                                         const std::vector<SplitSpec>& splits, const Context& c,
                                         std::vector<int64_t>& sample_of) {
  const auto n = static_cast<int64_t>(file.records.size());
  std::vector<char> use(n, 0);
  for (const auto& s : splits) std::fill(use.begin() + s.start, use.begin() + s.end, 1);
  for (const BadRecord& b : file.bad) {
    if (!use[b.index]) continue;
    if (c.options->on_bad_record == OnBadRecord::kFail) {
      throw InputError(describe_bad_record(b, c.input) +
                       " (pass --on-bad-record skip to drop such records)");
    }
    use[b.index] = 0;
  }
  std::vector<int64_t> indices;
  sample_of.assign(n, -1);
  for (int64_t i = 0; i < n; ++i) {
    if (!use[i]) continue;
    sample_of[i] = static_cast<int64_t>(indices.size());
    indices.push_back(i);
  }
  return indices;
}

// A split with no sample left is an error, raised before anything is written.
void check_has_samples(const SplitSpec& split, const std::vector<int64_t>& sample_of,
                       const std::vector<AlpacaSample>& samples, const Context& c) {
  for (int64_t i = split.start; i < split.end; ++i) {
    if (sample_of[i] >= 0 && samples[sample_of[i]].has_label()) return;
  }
  throw InputError(c.input + ": records [" + std::to_string(split.start) + ", " +
                   std::to_string(split.end) + ") leave no sample with a label token (all bad, " +
                   "or --max-len " + std::to_string(c.options->max_len) + " too small)");
}

}  // namespace

SplitSpec parse_split(const std::string& spec) {
  const size_t eq = spec.find('=');
  const size_t colon = spec.find(':', eq == std::string::npos ? 0 : eq);
  if (eq == std::string::npos || colon == std::string::npos) {
    throw InputError("--split '" + spec + "': expected NAME=START:END, e.g. train=0:200");
  }
  SplitSpec s;
  s.name = spec.substr(0, eq);
  const bool name_ok =
      !s.name.empty() && s.name != "." && s.name != ".." &&
      std::all_of(s.name.begin(), s.name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
      });
  if (!name_ok) {
    throw InputError("--split '" + spec + "': NAME must be letters, digits, '_', '-' or '.'");
  }
  s.start = parse_index(spec.substr(eq + 1, colon - eq - 1), spec);
  s.end = parse_index(spec.substr(colon + 1), spec);
  if (s.start >= s.end) {
    throw InputError("--split '" + spec + "': START must be below END (an empty range)");
  }
  return s;
}

fs::path default_alpaca_input() {
  std::vector<fs::path> candidates;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back(exe.parent_path().parent_path() / "share/llt" / kDefaultInput);
#ifdef LLT_ASSETS_DIR
  candidates.push_back(fs::path(LLT_ASSETS_DIR) / kDefaultInput);
#endif
  for (const auto& path : candidates) {
    if (fs::is_regular_file(path, ec)) return path;
  }
  std::string tried;
  for (const auto& path : candidates) tried += (tried.empty() ? "" : ", ") + path.string();
  throw InputError("no --input given and the shipped Alpaca sample is not at " + tried);
}

std::vector<AlpacaSample> tokenize_records(const std::vector<AlpacaRecord>& records,
                                           const std::vector<int64_t>& indices,
                                           const Tokenizer& tokenizer, int64_t max_len,
                                           int threads) {
  const SegmentationPlan plan = plan_segmentation(tokenizer.path());
  SharedSegmentCache shared;
  std::vector<AlpacaSample> out(indices.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    try {
      CachedEncoder encoder(tokenizer, plan, &shared);
      while (!failed) {
        const size_t begin = next.fetch_add(kRecordsPerTask);
        if (begin >= indices.size()) break;
        const size_t end = std::min(indices.size(), begin + kRecordsPerTask);
        for (size_t k = begin; k < end; ++k) {
          out[k] = make_alpaca_sample(records[indices[k]], encoder, tokenizer.bos_id(),
                                      tokenizer.eos_id(), max_len);
        }
      }
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  const size_t tasks = (indices.size() + kRecordsPerTask - 1) / kRecordsPerTask;
  const int workers = static_cast<int>(std::max<size_t>(1, std::min<size_t>(threads, tasks)));
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back(work);
  work();  // this thread is worker 0
  for (auto& thread : pool) thread.join();
  if (error) std::rethrow_exception(error);
  return out;
}

int run_tokenize(const TokenizeToolOptions& o, const std::string& command_line) {
  const auto started = std::chrono::steady_clock::now();
  check_options(o);
  const int threads = resolve_threads(o.threads);
  const Tokenizer tokenizer = Tokenizer::load(o.tokenizer);
  if (tokenizer.bos_id() < 0 || tokenizer.eos_id() < 0) {
    throw InputError(o.tokenizer + ": the Alpaca recipe needs BOS and EOS, this tokenizer has " +
                     "bos_id " + std::to_string(tokenizer.bos_id()) + ", eos_id " +
                     std::to_string(tokenizer.eos_id()));
  }
  const fs::path out_dir = o.output;
  check_output(out_dir, o.overwrite);  // refuse before any work

  Context c;
  c.options = &o;
  c.tokenizer = &tokenizer;
  c.input = o.input.empty() ? default_alpaca_input().string() : o.input;
  c.command_line = command_line;
  const std::string text = read_file(c.input);
  c.source_sha256 = sha256_hex(text);
  const AlpacaFile file = parse_alpaca_records(text, c.input, o.max_record_bytes);
  c.input_format = file.format;
  const std::vector<SplitSpec> splits =
      selections(o, static_cast<int64_t>(file.records.size()), c.input);
  std::vector<int64_t> sample_of;
  const std::vector<int64_t> indices = records_to_tokenize(file, splits, c, sample_of);
  const std::vector<AlpacaSample> samples =
      tokenize_records(file.records, indices, tokenizer, o.max_len, threads);
  for (const auto& split : splits) check_has_samples(split, sample_of, samples, c);

  // Nothing was written before this point. The new shards go beside the old dataset, which stays
  // whole until commit() publishes the new manifests; a failure removes what this run wrote.
  std::vector<fs::path> dirs;
  for (const auto& split : splits) {
    dirs.push_back(split.name.empty() ? out_dir : out_dir / split.name);
  }
  DatasetFolders folders(out_dir, dirs);
  std::vector<Manifest> manifests;
  for (size_t i = 0; i < splits.size(); ++i) {
    manifests.push_back(
        write_split(c, splits[i], dirs[i], folders.generation(), file, sample_of, samples));
  }
  folders.commit(manifests);
  int64_t written = 0;
  for (size_t i = 0; i < splits.size(); ++i) {
    print_split(manifests[i], dirs[i]);
    written += manifests[i].samples;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cerr << "llt-tokenize: " << indices.size() << " records tokenized, " << written
            << " samples written in " << seconds << " s ("
            << static_cast<int64_t>(indices.size() / std::max(seconds, 1e-9)) << " samples/s, "
            << threads << (threads == 1 ? " thread" : " threads") << ")\n";
  return 0;
}

}  // namespace llt::tools
