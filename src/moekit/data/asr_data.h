#pragma once
// Speech data as ASR users keep it: WeNet data.list (JSON lines with key,
// wav, txt) or a Kaldi data directory (wav.scp + text). Character units as
// WeNet builds them (spaces become "▁").
#include <string>
#include <vector>

#include "moekit/data/units.h"

namespace moekit {

struct Utterance {
  std::string key;
  std::string wav;   // path
  std::string text;  // transcript
};

// A data.list file or a Kaldi data directory (by what `path` is).
// Relative wav paths in a data.list are taken relative to the list's directory.
std::vector<Utterance> read_asr_data(const std::string& path);

// UTF-8 characters of `text`; ASCII white space (space, tab, line breaks,
// form feed) as "▁", runs of it collapsed.
std::vector<std::string> text_to_chars(const std::string& text);

// <blank>, <unk>, the characters of all transcripts (sorted), <sos/eos>.
Units build_char_units(const std::vector<Utterance>& data);

// Token ids of a transcript; characters without a unit map to <unk>, or
// raise an error naming them when the units have no <unk>.
std::vector<int64_t> tokenize(const std::string& text, const Units& units, const std::string& where);

}  // namespace moekit
