#include "moekit/core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <nlohmann/json.hpp>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/core/mapped_file.h"
#include "moekit/core/utf8.h"

namespace moekit {
namespace {

using json = nlohmann::json;

// Upper bound on the JSON header, as in the reference implementation.
constexpr uint64_t kMaxHeaderBytes = 100u * 1024u * 1024u;

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},  {"I32", torch::kInt32},
    {"I16", torch::kInt16},    {"I8", torch::kInt8},     {"U8", torch::kUInt8},
    {"BOOL", torch::kBool},
};

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors stores little-endian data; big-endian hosts are not supported");

uint64_t read_u64_le(const char* p) {
  uint64_t value = 0;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

// Multiplies with overflow detection.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

SafetensorsEntry parse_entry(const std::string& name, const json& value, uint64_t data_size,
                             const std::string& source) {
  auto where = [&] { return str_cat(source, ": tensor '", printable(name, 200), "'"); };
  MOEKIT_CHECK_ARG(value.is_object(), where(), ": header entry is not an object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    MOEKIT_CHECK_ARG(value.contains(key), where(), ": header entry lacks '", key, "'");
  }
  SafetensorsEntry entry;
  const json& dtype = value["dtype"];
  MOEKIT_CHECK_ARG(dtype.is_string(), where(), ": 'dtype' is not a string");
  const std::string dtype_name = dtype.get<std::string>();
  auto it = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                         [&](const DtypeName& d) { return dtype_name == d.name; });
  MOEKIT_CHECK_ARG(it != std::end(kDtypes), where(), ": unsupported dtype '", dtype_name, "'");
  entry.dtype = it->type;

  const json& shape = value["shape"];
  MOEKIT_CHECK_ARG(shape.is_array(), where(), ": 'shape' is not an array");
  uint64_t numel = 1;
  for (const json& dim : shape) {
    MOEKIT_CHECK_ARG(dim.is_number_unsigned() || (dim.is_number_integer() && dim.get<int64_t>() >= 0),
                     where(), ": shape has a negative or non-integer dimension");
    const uint64_t d = dim.get<uint64_t>();
    MOEKIT_CHECK_ARG(d <= static_cast<uint64_t>(INT64_MAX) && checked_mul(numel, d, &numel), where(),
                     ": shape overflows");
    entry.shape.push_back(static_cast<int64_t>(d));
  }

  const json& offsets = value["data_offsets"];
  MOEKIT_CHECK_ARG(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                       offsets[1].is_number_unsigned(),
                   where(), ": 'data_offsets' must be two non-negative integers");
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  MOEKIT_CHECK_ARG(entry.begin <= entry.end, where(), ": data_offsets [", entry.begin, ", ",
                   entry.end, "] are reversed");
  MOEKIT_CHECK_ARG(entry.end <= data_size, where(), ": data_offsets end ", entry.end,
                   " lies beyond the data section (", data_size, " bytes); the file is truncated");
  uint64_t nbytes = 0;
  const uint64_t element_size = c10::elementSize(entry.dtype);
  MOEKIT_CHECK_ARG(checked_mul(numel, element_size, &nbytes), where(), ": byte size overflows");
  MOEKIT_CHECK_ARG(entry.end - entry.begin == nbytes, where(), ": data_offsets span ",
                   entry.end - entry.begin, " bytes but shape x ", dtype_name, " needs ", nbytes);
  return entry;
}

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType dtype) {
  for (const DtypeName& d : kDtypes) {
    if (d.type == dtype) return d.name;
  }
  throw std::invalid_argument(str_cat("safetensors cannot store dtype ", c10::toString(dtype)));
}

SafetensorsHeader parse_safetensors_header(const char* data, size_t size, uint64_t file_size,
                                           const std::string& source) {
  MOEKIT_CHECK_ARG(file_size >= 8 && size >= 8, source,
                   ": not a safetensors file (shorter than its 8-byte header length)");
  const uint64_t header_len = read_u64_le(data);
  MOEKIT_CHECK_ARG(header_len <= kMaxHeaderBytes, source, ": header length ", header_len,
                   " exceeds the ", kMaxHeaderBytes, "-byte limit; not a safetensors file");
  MOEKIT_CHECK_ARG(header_len <= file_size - 8, source, ": header length ", header_len,
                   " exceeds the file size (", file_size, " bytes); the file is truncated");
  MOEKIT_CHECK_ARG(header_len + 8 <= size, source, ": header not fully read");
  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  const uint64_t data_size = file_size - header.data_start;

  json root;
  std::set<std::string> seen_names;
  std::string duplicate;
  auto find_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 &&
        !seen_names.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    root = json::parse(data + 8, data + 8 + header_len, find_duplicates);
  } catch (const json::exception& e) {
    throw std::invalid_argument(str_cat(source, ": header is not valid JSON (", json_error_reason(e), ")"));
  }
  MOEKIT_CHECK_ARG(root.is_object(), source, ": header is not a JSON object");
  MOEKIT_CHECK_ARG(duplicate.empty(), source, ": header names '", duplicate, "' twice");

  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      MOEKIT_CHECK_ARG(it.value().is_object(), source, ": __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        MOEKIT_CHECK_ARG(m.value().is_string(), source, ": __metadata__ value '", m.key(),
                         "' is not a string");
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    header.entries[it.key()] = parse_entry(it.key(), it.value(), data_size, source);
  }
  // Every pair of non-empty byte ranges must be disjoint: sorted by start,
  // each range must begin at or after the furthest end seen so far (not
  // just its neighbour's: an empty tensor between two others, or one range
  // holding several, must not hide an overlap).
  std::vector<std::pair<const SafetensorsEntry*, const std::string*>> by_offset;
  for (const auto& [name, entry] : header.entries)
    if (entry.begin != entry.end) by_offset.emplace_back(&entry, &name);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto& a, const auto& b) { return a.first->begin < b.first->begin; });
  for (size_t i = 1, furthest = 0; i < by_offset.size(); ++i) {
    const SafetensorsEntry& cur = *by_offset[i].first;
    MOEKIT_CHECK_ARG(cur.begin >= by_offset[furthest].first->end, source, ": tensors '",
                     *by_offset[furthest].second, "' and '", *by_offset[i].second, "' have overlapping data ranges");
    if (cur.end > by_offset[furthest].first->end) furthest = i;
  }
  return header;
}

namespace {

TensorMap tensors_from_buffer(const SafetensorsHeader& header, const char* base) {
  TensorMap tensors;
  for (const auto& [name, entry] : header.entries) {
    torch::Tensor t = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.dtype));
    const size_t nbytes = entry.end - entry.begin;
    if (nbytes > 0) std::memcpy(t.data_ptr(), base + header.data_start + entry.begin, nbytes);
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

}  // namespace

SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& source) {
  SafetensorsHeader header = parse_safetensors_header(bytes.data(), bytes.size(), bytes.size(), source);
  return {tensors_from_buffer(header, bytes.data()), header.metadata};
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  MappedFile file(path, "a safetensors file");
  return parse_safetensors_header(file.data(), file.size(), file.size(), path);
}

SafetensorsContents read_safetensors(const std::string& path) {
  MappedFile file(path, "a safetensors file");
  SafetensorsHeader header = parse_safetensors_header(file.data(), file.size(), file.size(), path);
  return {tensors_from_buffer(header, file.data()), header.metadata};
}

namespace {

// The padded header text of `tensors` in name order (only dtype and shape
// are read: no tensor is copied) and the size of the data section.
std::string safetensors_header_text(const TensorMap& tensors, const StringMap& metadata, uint64_t* data_bytes) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    MOEKIT_CHECK_ARG(name != "__metadata__", "a tensor cannot be named __metadata__");
    MOEKIT_CHECK_ARG(tensor.defined(), "tensor '", name, "' is undefined");
    const uint64_t nbytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(tensor.scalar_type())},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  *data_bytes = offset;
  std::string out;
  const uint64_t header_len = text.size();
  out.append(reinterpret_cast<const char*>(&header_len), sizeof(header_len));
  return out + text;
}

// Hands `sink` the file's bytes in order: the header, then each tensor's
// bytes, one tensor copied to contiguous CPU memory at a time.
template <typename Sink>
void emit_safetensors(const TensorMap& tensors, const StringMap& metadata, uint64_t* total_bytes, Sink&& sink) {
  uint64_t data_bytes = 0;
  const std::string header = safetensors_header_text(tensors, metadata, &data_bytes);
  if (total_bytes != nullptr) *total_bytes = header.size() + data_bytes;
  sink(std::string_view(header));
  for (const auto& [name, tensor] : tensors) {
    const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    sink(std::string_view(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size()));
  }
}

}  // namespace

std::string serialize_safetensors(const TensorMap& tensors, const StringMap& metadata) {
  std::string out;
  uint64_t total = 0;  // set before the first piece arrives
  emit_safetensors(tensors, metadata, &total, [&](std::string_view bytes) {
    if (out.empty()) out.reserve(total);
    out.append(bytes);
  });
  return out;
}

void write_safetensors(const std::string& path, const TensorMap& tensors, const StringMap& metadata) {
  AtomicFileWriter file(path);
  emit_safetensors(tensors, metadata, nullptr, [&](std::string_view bytes) { file.write(bytes); });
  file.commit();
}

}  // namespace moekit
