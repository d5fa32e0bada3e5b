#include "moekit/data/parallel_data.h"

#include <algorithm>
#include <fstream>
#include <map>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/utf8.h"

namespace moekit {
namespace {

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  for (size_t tab = line.find('\t'); tab != std::string::npos; tab = line.find('\t', start)) {
    fields.push_back(line.substr(start, tab - start));
    start = tab + 1;
  }
  fields.push_back(line.substr(start));
  return fields;
}

std::vector<std::string> read_lines(const std::string& path) {
  MOEKIT_CHECK_ARG(path_exists(path) && !is_directory(path), path, ": no such file");
  std::ifstream in(path, std::ios::binary);
  MOEKIT_CHECK_ARG(in, path, ": cannot open");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

}  // namespace

std::vector<ParallelLine> read_parallel_tsv(const std::string& path) {
  std::vector<ParallelLine> out;
  const std::vector<std::string> lines = read_lines(path);
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.empty()) continue;
    const std::string where = str_cat(path, ":", i + 1);
    MOEKIT_CHECK_ARG(is_valid_utf8(line), where, ": invalid UTF-8");
    const std::vector<std::string> f = split_tabs(line);
    MOEKIT_CHECK_ARG(f.size() == 3, where, ": expected task<TAB>source<TAB>target, got ", f.size(), " field",
                     f.size() == 1 ? "" : "s");
    MOEKIT_CHECK_ARG(!f[0].empty() && !f[1].empty() && !f[2].empty(), where, ": empty ",
                     f[0].empty() ? "task" : f[1].empty() ? "source" : "target");
    out.push_back({f[0], f[1], f[2], static_cast<int64_t>(i + 1)});
  }
  MOEKIT_CHECK_ARG(!out.empty(), path, ": no sentence pairs");
  return out;
}

std::pair<std::vector<std::string>, std::vector<std::string>> read_aligned_lines(const std::string& first,
                                                                                const std::string& second) {
  std::vector<std::string> a = read_lines(first), b = read_lines(second);
  MOEKIT_CHECK_ARG(a.size() == b.size(), first, " has ", a.size(), " lines but ", second, " has ", b.size(),
                   ": the files must be line-aligned");
  return {std::move(a), std::move(b)};
}

std::vector<std::vector<int64_t>> encode_sources(const LmTokenizer& tokenizer, const std::vector<std::string>& texts,
                                                 const std::string& task) {
  const std::string tag = "<2" + task + ">";
  const int64_t tag_id = tokenizer.id_of(tag);
  MOEKIT_CHECK_ARG(tag_id >= 0, tokenizer.path(), ": no piece ", tag, " for task '", task,
                   "' (a tokenizer trained with --user-symbols for every task; is it the model's?)");
  MOEKIT_CHECK_ARG(tokenizer.eos_id() >= 0, tokenizer.path(), ": no </s> piece");
  std::vector<std::vector<int64_t>> out = tokenizer.encode(texts);
  for (auto& ids : out) {
    ids.insert(ids.begin(), tag_id);
    ids.push_back(tokenizer.eos_id());
  }
  return out;
}

std::vector<std::vector<int64_t>> encode_targets(const LmTokenizer& tokenizer, const std::vector<std::string>& texts) {
  MOEKIT_CHECK_ARG(tokenizer.eos_id() >= 0, tokenizer.path(), ": no </s> piece");
  std::vector<std::vector<int64_t>> out = tokenizer.encode(texts);
  for (auto& ids : out) ids.push_back(tokenizer.eos_id());
  return out;
}

std::vector<std::string> tasks_of(const std::vector<ParallelLine>& lines) {
  std::vector<std::string> tasks;
  for (const auto& l : lines) {
    if (std::find(tasks.begin(), tasks.end(), l.task) == tasks.end()) tasks.push_back(l.task);
  }
  return tasks;
}

std::vector<ParallelExample> encode_parallel(const std::vector<ParallelLine>& lines, const LmTokenizer& tokenizer,
                                             const std::vector<std::string>& tasks, const std::string& where) {
  // One spm_encode run per task for the sources and one for all targets.
  std::map<std::string, std::vector<size_t>> by_task;
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto it = std::find(tasks.begin(), tasks.end(), lines[i].task);
    MOEKIT_CHECK_ARG(it != tasks.end(), where, ":", lines[i].line, ": task '", printable(lines[i].task),
                     "' is not one of the model's tasks");
    by_task[lines[i].task].push_back(i);
  }
  std::vector<ParallelExample> out(lines.size());
  for (const auto& [task, index] : by_task) {
    std::vector<std::string> texts;
    for (size_t i : index) texts.push_back(lines[i].source);
    std::vector<std::vector<int64_t>> ids = encode_sources(tokenizer, texts, task);
    MOEKIT_CHECK(ids.size() == index.size(), where, ": the tokenizer returned ", ids.size(), " lines for ",
                 index.size());
    const int64_t task_id = static_cast<int64_t>(std::find(tasks.begin(), tasks.end(), task) - tasks.begin());
    for (size_t j = 0; j < index.size(); ++j) {
      out[index[j]].task = task_id;
      out[index[j]].source = std::move(ids[j]);
    }
  }
  std::vector<std::string> targets;
  for (const auto& l : lines) targets.push_back(l.target);
  std::vector<std::vector<int64_t>> ids = encode_targets(tokenizer, targets);
  MOEKIT_CHECK(ids.size() == lines.size(), where, ": the tokenizer returned ", ids.size(), " lines for ",
               lines.size());
  for (size_t i = 0; i < lines.size(); ++i) out[i].target = std::move(ids[i]);
  return out;
}

}  // namespace moekit
