#include "moekit/dist/sharded_checkpoint.h"

#include <nlohmann/json.hpp>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit::dist {

std::string shard_path(const std::string& dir, const std::string& stem, int64_t shard) {
  return dir + "/" + stem + ".shard" + std::to_string(shard) + ".safetensors";
}

void write_shard_manifest(const std::string& dir, const ShardManifest& manifest) {
  nlohmann::json sharded = nlohmann::json::object();
  for (const auto& [name, shape] : manifest.sharded) sharded[name] = shape;
  const nlohmann::json j = {{"format_version", 1}, {"shards", manifest.shards}, {"sharded", sharded}};
  write_file_atomic(dir + "/" + kShardManifestFile, j.dump(1) + "\n");
}

std::optional<ShardManifest> read_shard_manifest(const std::string& dir) {
  const std::string path = dir + "/" + kShardManifestFile;
  if (!path_exists(path)) return std::nullopt;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(str_cat(path, ": not JSON (", e.what(), ")"));
  }
  MOEKIT_CHECK_ARG(j.is_object() && j.contains("format_version") && j["format_version"].is_number_integer() &&
                       j["format_version"] == 1, path,
                   ": not a shard manifest of format_version 1");
  MOEKIT_CHECK_ARG(j.contains("shards") && j["shards"].is_number_integer() && j["shards"].get<int64_t>() >= 1 &&
                       j["shards"].get<int64_t>() <= 65536,
                   path, ": 'shards' must be an integer in [1, 65536]");
  MOEKIT_CHECK_ARG(j.contains("sharded") && j["sharded"].is_object(), path, ": 'sharded' must map names to shapes");
  ShardManifest m;
  m.shards = j["shards"].get<int64_t>();
  for (const auto& [name, shape] : j["sharded"].items()) {
    MOEKIT_CHECK_ARG(shape.is_array() && !shape.empty(), path, ": the shape of '", name, "' must be a list of sizes");
    std::vector<int64_t> sizes;
    for (const auto& s : shape) {
      MOEKIT_CHECK_ARG(s.is_number_integer() && s.get<int64_t>() >= 0, path, ": the shape of '", name,
                       "' must be a list of sizes");
      sizes.push_back(s.get<int64_t>());
    }
    MOEKIT_CHECK_ARG(sizes[0] % m.shards == 0, path, ": '", name, "' has ", sizes[0], " rows, not divisible into ",
                     m.shards, " shards");
    m.sharded[name] = std::move(sizes);
  }
  return m;
}

TensorMap merge_shards(const std::string& dir, const std::string& stem, const ShardManifest& manifest, TensorMap base,
                       const std::vector<std::string>& suffixes, const std::vector<std::string>& replicated) {
  std::vector<TensorMap> shards;
  std::vector<std::string> paths;
  for (int64_t k = 0; k < manifest.shards; ++k) {
    paths.push_back(shard_path(dir, stem, k));
    MOEKIT_CHECK_ARG(path_exists(paths.back()), dir, ": shard ", k, " of ", manifest.shards, " is missing (",
                     paths.back(), ")");
    shards.push_back(read_safetensors(paths.back()).tensors);
  }
  for (const auto& [name, whole] : manifest.sharded) {
    for (const std::string& suffix : suffixes) {
      const std::string key = name + suffix;
      MOEKIT_CHECK_ARG(!base.count(key), dir, ": '", key, "' is both sharded and whole");
      std::vector<torch::Tensor> parts;
      for (int64_t k = 0; k < manifest.shards; ++k) {
        const auto it = shards[k].find(key);
        if (it == shards[k].end()) continue;
        const torch::Tensor& t = it->second;
        std::vector<int64_t> want = whole;
        want[0] /= manifest.shards;
        MOEKIT_CHECK_ARG(t.sizes().vec() == want, paths[k], ": '", key, "' has shape ", t.sizes(),
                         ", expected ", c10::IntArrayRef(want), " (1/", manifest.shards, " of ",
                         c10::IntArrayRef(whole), ")");
        parts.push_back(t);
      }
      if (parts.empty()) {
        MOEKIT_CHECK_ARG(!suffix.empty(), dir, ": no shard holds '", key, "'");
        continue;
      }
      MOEKIT_CHECK_ARG(static_cast<int64_t>(parts.size()) == manifest.shards, dir, ": '", key, "' is in ",
                       parts.size(), " of the ", manifest.shards, " shards");
      base[key] = torch::cat(parts);
    }
    for (const std::string& suffix : replicated) {
      const auto it = shards[0].find(name + suffix);
      if (it != shards[0].end()) base[name + suffix] = it->second;
    }
  }
  return base;
}

}  // namespace moekit::dist
