#pragma once
// Parallel text for seq2seq models: a UTF-8 TSV file, one pair per line,
//   task <TAB> source <TAB> target
// (the task is the target language, e.g. "de", or any name the model lists),
// tokenized with the model's SentencePiece model. A source starts with its
// task's tag piece "<2xx>" and ends with </s>; a target ends with </s>.
#include <string>
#include <vector>

#include "moekit/core/utf8.h"
#include "moekit/data/lm_tokenizer.h"

namespace moekit {

struct ParallelLine {
  std::string task, source, target;
  int64_t line = 0;  // 1-based line in its file
};

// Reads a parallel TSV file. Empty lines are skipped; a line without exactly
// three tab-separated fields, an empty field or invalid UTF-8 is an error
// naming the file and line.
std::vector<ParallelLine> read_parallel_tsv(const std::string& path);

// Reads two line-aligned text files (hypotheses and references, or sources
// and targets) and refuses them when their line counts differ.
std::pair<std::vector<std::string>, std::vector<std::string>> read_aligned_lines(const std::string& first,
                                                                                const std::string& second);

// Source ids of each text for `task`: the tag piece, the text's pieces, </s>.
// Errors when the tokenizer has no tag piece for the task or no </s>.
std::vector<std::vector<int64_t>> encode_sources(const LmTokenizer& tokenizer, const std::vector<std::string>& texts,
                                                 const std::string& task);
// Target ids of each text: its pieces, </s>.
std::vector<std::vector<int64_t>> encode_targets(const LmTokenizer& tokenizer, const std::vector<std::string>& texts);

struct ParallelExample {
  int64_t task = 0;                     // index into the task list
  std::vector<int64_t> source, target;  // as encode_sources / encode_targets
};

// Every line encoded; `tasks` maps task names to ids (a line whose task is
// not listed is an error naming it and its line).
std::vector<ParallelExample> encode_parallel(const std::vector<ParallelLine>& lines, const LmTokenizer& tokenizer,
                                             const std::vector<std::string>& tasks, const std::string& where);

// The task names of `lines` in order of first appearance.
std::vector<std::string> tasks_of(const std::vector<ParallelLine>& lines);

}  // namespace moekit
