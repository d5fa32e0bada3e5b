#pragma once
// Modelling units as WeNet writes them (units.txt: "<unit> <id>" per line,
// <blank> = 0, <unk> usually 1, <sos/eos> last; "▁" marks a word boundary).
#include <map>
#include <string>
#include <vector>

namespace moekit {

class Units {
 public:
  Units() = default;
  explicit Units(std::vector<std::string> symbols);

  static Units read(const std::string& path);    // units.txt, validated
  static Units parse(const std::string& text, const std::string& where);
  std::string serialize() const;                 // units.txt text

  int64_t size() const { return static_cast<int64_t>(symbols_.size()); }
  const std::string& symbol(int64_t id) const { return symbols_.at(static_cast<size_t>(id)); }
  int64_t id(const std::string& symbol) const;   // -1 if absent
  int64_t unk_id() const { return id("<unk>"); }

  // Token ids -> text: units joined, "▁" becomes a space, special units dropped.
  std::string to_text(const std::vector<int64_t>& ids) const;

 private:
  std::vector<std::string> symbols_;
  std::map<std::string, int64_t> ids_;
};

}  // namespace moekit
