#pragma once
// Options structs described once, as a table of fields.
//
// Each options struct (MoE, fbank, trainer, LM, ASR...) declares one
// FieldTable: for every field its YAML name, where it lives in the struct,
// a one-line help and the checks on its value. YAML in and out, the
// unknown-key error (with the closest known key), validation and the
// one-line `to_string` all come from that table, so a new field is one line
// and cannot be forgotten by one of them.
//
//   const FieldTable<MoEOptions>& table() {
//     static const auto t = FieldTable<MoEOptions>("MoE")
//       .field("d_model", &MoEOptions::d_model, "input/output width").required().positive()
//       .field("top_k", &MoEOptions::top_k, "experts per token")
//       .rule([](const MoEOptions& o) { return o.top_k <= o.num_experts ? "" : "top_k > num_experts"; });
//     return t;
//   }
//
// Reading sets only the fields present, over the values already in the
// struct (its defaults, or defaults a caller set first).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/core/config.h"

namespace moekit {

// The candidate closest to `word` by edit distance when it is close enough
// to be a likely misspelling (at most a third of the word's length, at
// least 1 and at most 3 edits); "" otherwise.
std::string closest_name(const std::string& word, const std::vector<std::string>& candidates);

// Throws std::invalid_argument if `node` (a mapping, or absent/null) has a
// key not in `known`: "<where>: unknown option 'lr_rate' (did you mean 'lr'?)".
void check_known_keys(const YAML::Node& node, const std::vector<std::string>& known, const std::string& where);

template <class Options>
class FieldTable {
 public:
  // The label used in messages about the struct as a whole ("MoE").
  explicit FieldTable(std::string label) : label_(std::move(label)) {}

  // A scalar field (int, int64_t, double, bool, std::string) or a list of
  // strings at a member.
  template <class V>
  FieldTable& field(std::string name, V Options::*member, std::string help) {
    return field<V>(std::move(name), [member](Options& o) -> V& { return o.*member; }, std::move(help));
  }
  // The same at any place in the struct (a member of a member).
  template <class V>
  FieldTable& field(std::string name, std::function<V&(Options&)> at, std::string help) {
    Field f = base(std::move(name), std::move(help));
    const std::string key = f.name;
    f.read = [at, key](const YAML::Node& node, Options& o, const std::string& where) {
      at(o) = yaml_get<V>(node, key, where);
    };
    f.write = [at, key](const Options& o, YAML::Node& node) { node[key] = at(const_cast<Options&>(o)); };
    f.show = [at](const Options& o) { return show_value(at(const_cast<Options&>(o))); };
    f.get_double = number_getter<V>(at);
    fields_.push_back(std::move(f));
    return *this;
  }
  // A field whose YAML spellings stand for values: {{"conv2d", 4},
  // {"conv2d6", 6}}. Written as the first spelling of its value.
  template <class V>
  FieldTable& choice(std::string name, V Options::*member, std::vector<std::pair<std::string, V>> spellings,
                     std::string help) {
    return choice<V>(std::move(name), [member](Options& o) -> V& { return o.*member; }, std::move(spellings),
                     std::move(help));
  }
  template <class V>
  FieldTable& choice(std::string name, std::function<V&(Options&)> at, std::vector<std::pair<std::string, V>> spellings,
                     std::string help) {
    Field f = base(std::move(name), std::move(help));
    const std::string key = f.name;
    std::string listed;
    for (const auto& s : spellings) listed += (listed.empty() ? "" : " | ") + s.first;
    f.help += " (" + listed + ")";
    auto spelling_of = [spellings](const V& v) {
      for (const auto& s : spellings)
        if (s.second == v) return s.first;
      return std::string("?");
    };
    f.read = [at, key, spellings, listed](const YAML::Node& node, Options& o, const std::string& where) {
      const std::string text = yaml_get<std::string>(node, key, where);
      for (const auto& s : spellings) {
        if (s.first == text) {
          at(o) = s.second;
          return;
        }
      }
      throw std::invalid_argument(str_cat(where, ": unsupported ", key, " '", text, "' (", listed, ")"));
    };
    f.write = [at, key, spelling_of](const Options& o, YAML::Node& node) {
      node[key] = spelling_of(at(const_cast<Options&>(o)));
    };
    f.show = [at, spelling_of](const Options& o) { return spelling_of(at(const_cast<Options&>(o))); };
    fields_.push_back(std::move(f));
    return *this;
  }
  // An enumeration read and written through its parse / name functions.
  template <class E>
  FieldTable& named(std::string name, E Options::*member, E (*parse)(const std::string&), std::string (*name_of)(E),
                    std::string help) {
    return named<E>(std::move(name), [member](Options& o) -> E& { return o.*member; }, parse, name_of,
                    std::move(help));
  }
  template <class E>
  FieldTable& named(std::string name, std::function<E&(Options&)> at, E (*parse)(const std::string&),
                    std::string (*name_of)(E), std::string help) {
    Field f = base(std::move(name), std::move(help));
    const std::string key = f.name;
    f.read = [at, key, parse](const YAML::Node& node, Options& o, const std::string& where) {
      const std::string text = yaml_get<std::string>(node, key, where);
      try {
        at(o) = parse(text);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(str_cat(where, ": field '", key, "': ", e.what()));
      }
    };
    f.write = [at, key, name_of](const Options& o, YAML::Node& node) { node[key] = name_of(at(const_cast<Options&>(o))); };
    f.show = [at, name_of](const Options& o) { return name_of(at(const_cast<Options&>(o))); };
    fields_.push_back(std::move(f));
    return *this;
  }
  // A nested mapping with its own table: read, written, validated and shown
  // through it (to_string prefixes its fields with "name.").
  template <class S>
  FieldTable& section(std::string name, S Options::*member, const FieldTable<S>& table, std::string help) {
    return section<S>(std::move(name), [member](Options& o) -> S& { return o.*member; }, table, std::move(help));
  }
  template <class S>
  FieldTable& section(std::string name, std::function<S&(Options&)> at, const FieldTable<S>& table, std::string help) {
    Field f = base(std::move(name), std::move(help));
    const std::string key = f.name;
    const FieldTable<S>* sub = &table;
    f.read = [at, key, sub](const YAML::Node& node, Options& o, const std::string& where) {
      sub->read(node[key], at(o), where + ": " + key);
    };
    f.write = [at, key, sub](const Options& o, YAML::Node& node) { node[key] = sub->write(at(const_cast<Options&>(o))); };
    f.show = [at, key, sub](const Options& o) { return sub->to_string(at(const_cast<Options&>(o)), key + "."); };
    f.nested_validate = [at, key, sub](const Options& o, const std::string& where) {
      sub->validate(at(const_cast<Options&>(o)), where + ": " + key);
    };
    f.is_section = true;
    fields_.push_back(std::move(f));
    return *this;
  }

  // Modifiers of the field added last.
  // The field must be present when reading.
  FieldTable& required() {
    last().required = true;
    return *this;
  }
  // check(o) returns "" when the field's value is fine, else what is wrong
  // with it ("must be odd"): the error reads "<where>: <name> must be odd,
  // got 4". For conditions on other fields too, see rule().
  FieldTable& check(std::function<std::string(const Options&)> reason) {
    Field& f = last();
    auto show = f.show;
    const std::string key = f.name;
    f.checks.push_back([key, reason, show](const Options& o) -> std::string {
      const std::string why = reason(o);
      return why.empty() ? "" : str_cat(key, " ", why, ", got ", show(o));
    });
    return *this;
  }
  // Numeric shortcuts.
  FieldTable& positive() { return numeric_check([](double v) { return v > 0; }, "must be positive"); }
  FieldTable& non_negative() { return numeric_check([](double v) { return v >= 0; }, "must be >= 0"); }
  FieldTable& at_least(double bound) {
    return numeric_check([bound](double v) { return v >= bound; }, str_cat("must be >= ", bound_text(bound)));
  }
  FieldTable& at_most(double bound) {
    return numeric_check([bound](double v) { return v <= bound; }, str_cat("must be <= ", bound_text(bound)));
  }
  FieldTable& in_range(double lo, double hi) {
    return numeric_check([lo, hi](double v) { return v >= lo && v <= hi; },
                         str_cat("must be in [", bound_text(lo), ", ", bound_text(hi), "]"));
  }
  // Written only when `when` holds (optional sections, fields older readers
  // do not know).
  FieldTable& write_if(std::function<bool(const Options&)> when) {
    last().write_if = std::move(when);
    return *this;
  }
  // Written as this value instead of the stored one (a resolved default:
  // n_kv_heads 0 written as n_heads).
  template <class V>
  FieldTable& write_as(std::function<V(const Options&)> value) {
    const std::string key = last().name;
    last().write = [key, value](const Options& o, YAML::Node& node) { node[key] = value(o); };
    return *this;
  }

  // A rule across fields: returns "" when it holds, else the whole message
  // ("top_k must be in [1, num_experts=8], got 9").
  FieldTable& rule(std::function<std::string(const Options&)> rule) {
    rules_.push_back(std::move(rule));
    return *this;
  }

  // Sets the fields present in `node` over the values already in `o`.
  // Absent or null `node`: nothing to read. Refuses keys the table does not
  // know (naming the closest known one) and missing required fields.
  void read(const YAML::Node& node, Options& o, const std::string& where) const {
    if (!node.IsDefined() || node.IsNull()) {
      for (const Field& f : fields_)
        MOEKIT_CHECK_ARG(!f.required, where, ": missing field '", f.name, "'");
      return;
    }
    MOEKIT_CHECK_ARG(node.IsMap(), where, ": ", label_, " options must be a mapping");
    check_known_keys(node, names(), where);
    for (const Field& f : fields_) {
      const YAML::Node value = node[f.name];
      if (value.IsDefined() && !value.IsNull()) {
        f.read(node, o, where);
      } else {
        MOEKIT_CHECK_ARG(!f.required, where, ": missing field '", f.name, "'");
      }
    }
  }
  // Reads then validates: the usual from_yaml.
  Options parse(const YAML::Node& node, const std::string& where, Options o = Options()) const {
    read(node, o, where);
    validate(o, where);
    return o;
  }
  YAML::Node write(const Options& o) const {
    YAML::Node node(YAML::NodeType::Map);
    for (const Field& f : fields_) {
      if (!f.write_if || f.write_if(o)) f.write(o, node);
    }
    return node;
  }
  // "d_model=256 d_hidden=1024 ... section.field=...": every field that
  // write() writes.
  std::string to_string(const Options& o, const std::string& prefix = "") const {
    std::string out;
    for (const Field& f : fields_) {
      if (f.write_if && !f.write_if(o)) continue;
      const std::string text = f.is_section ? f.show(o) : prefix + f.name + "=" + f.show(o);
      if (!text.empty()) out += (out.empty() ? "" : " ") + text;
    }
    return out;
  }
  // Throws std::invalid_argument "<where>: <what>" for the first field or
  // rule that does not hold (where = "" leaves out the prefix).
  void validate(const Options& o, const std::string& where = "") const {
    const std::string prefix = (where.empty() ? label_ : where) + ": ";
    for (const Field& f : fields_) {
      for (const auto& check : f.checks) {
        const std::string why = check(o);
        if (!why.empty()) throw std::invalid_argument(prefix + why);
      }
      if (f.nested_validate) f.nested_validate(o, where.empty() ? label_ : where);
    }
    for (const auto& rule : rules_) {
      const std::string why = rule(o);
      if (!why.empty()) throw std::invalid_argument(prefix + why);
    }
  }
  // The same table without the named fields (a struct embedded where some
  // of its fields come from the outer one), relabelled.
  FieldTable without(const std::vector<std::string>& names, std::string label) const {
    FieldTable out(std::move(label));
    for (const Field& f : fields_)
      if (std::find(names.begin(), names.end(), f.name) == names.end()) out.fields_.push_back(f);
    out.rules_ = rules_;
    return out;
  }
  // Every field's name (sections included), in table order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const Field& f : fields_) out.push_back(f.name);
    return out;
  }
  // One line per field: "name: help", for --help texts and docs.
  std::string help(const std::string& indent = "  ") const {
    std::string out;
    for (const Field& f : fields_) out += indent + f.name + ": " + f.help + (f.required ? " (required)" : "") + "\n";
    return out;
  }

 private:
  struct Field {
    std::string name, help;
    bool required = false, is_section = false;
    std::function<void(const YAML::Node&, Options&, const std::string&)> read;
    std::function<void(const Options&, YAML::Node&)> write;
    std::function<std::string(const Options&)> show;
    std::function<bool(const Options&, double*)> get_double;  // numeric fields only
    std::function<void(const Options&, const std::string&)> nested_validate;
    std::function<bool(const Options&)> write_if;
    std::vector<std::function<std::string(const Options&)>> checks;
  };

  Field base(std::string name, std::string help) const {
    Field f;
    f.name = std::move(name);
    f.help = std::move(help);
    return f;
  }
  // 1048576, not 1.04858e+06.
  static std::string bound_text(double v) {
    if (v == static_cast<double>(static_cast<int64_t>(v))) return std::to_string(static_cast<int64_t>(v));
    return str_cat(v);
  }
  Field& last() {
    MOEKIT_CHECK(!fields_.empty(), "FieldTable: a modifier before any field");
    return fields_.back();
  }
  FieldTable& numeric_check(std::function<bool(double)> ok, std::string why) {
    Field& f = last();
    MOEKIT_CHECK(static_cast<bool>(f.get_double), "FieldTable: '", f.name, "' is not numeric");
    auto get = f.get_double;
    auto show = f.show;
    const std::string key = f.name;
    f.checks.push_back([get, show, key, ok, why](const Options& o) -> std::string {
      double v = 0;
      get(o, &v);
      return ok(v) ? "" : str_cat(key, " ", why, ", got ", show(o));
    });
    return *this;
  }
  template <class V>
  static std::function<bool(const Options&, double*)> number_getter(std::function<V&(Options&)> at) {
    if constexpr (std::is_arithmetic_v<V> && !std::is_same_v<V, bool>) {
      return [at](const Options& o, double* v) {
        *v = static_cast<double>(at(const_cast<Options&>(o)));
        return true;
      };
    } else {
      return {};
    }
  }
  template <class V>
  static std::string show_value(const V& v) {
    if constexpr (std::is_same_v<V, bool>) {
      return v ? "true" : "false";
    } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + v[i];
      return out + "]";
    } else {
      std::ostringstream out;
      out << v;
      return out.str();
    }
  }

  std::string label_;
  std::vector<Field> fields_;
  std::vector<std::function<std::string(const Options&)>> rules_;
};

}  // namespace moekit
