#pragma once
// Tensors sharded over the ranks of an expert-parallel run, on disk.
//
// A directory holding sharded tensors has a manifest.json naming them with
// their whole shapes and the number of shards; shard k of `stem` is the file
// <stem>.shard<k>.safetensors, holding rank k's slices (dimension 0, in rank
// order) under the tensors' own names, possibly with a suffix (Adam's
// moments: "<name>.exp_avg"). Everything else lives in the directory's
// ordinary files. Each rank writes its own shard, so no process ever holds
// every expert; reading concatenates the shards, so a directory written by
// P ranks loads into any other number.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "moekit/core/safetensors.h"

namespace moekit::dist {

constexpr const char* kShardManifestFile = "manifest.json";

struct ShardManifest {
  int64_t shards = 1;
  std::map<std::string, std::vector<int64_t>> sharded;  // name -> whole shape (sharded on dimension 0)
};

// `dir`/<stem>.shard<k>.safetensors
std::string shard_path(const std::string& dir, const std::string& stem, int64_t shard);

// Writes `dir`/manifest.json atomically.
void write_shard_manifest(const std::string& dir, const ShardManifest& manifest);

// `dir`'s manifest, or nothing where the directory has none. A malformed
// manifest is an error naming the file and what is wrong.
std::optional<ShardManifest> read_shard_manifest(const std::string& dir);

// The whole tensors: `base` (a TensorMap read from the directory's ordinary
// file) plus, for every sharded name and every suffix in `suffixes`, the
// concatenation of the shards' slices of <name><suffix> from <stem>'s
// shards. A suffix a shard lacks for a name is skipped on every shard
// (optimizer moments of a parameter that never had a gradient), and is an
// error where some shards hold it and others do not. <name><suffix> for a
// suffix in `replicated` (a value every shard holds alike, such as Adam's
// step count) is taken from shard 0. Errors name the file.
TensorMap merge_shards(const std::string& dir, const std::string& stem, const ShardManifest& manifest, TensorMap base,
                       const std::vector<std::string>& suffixes, const std::vector<std::string>& replicated = {});

}  // namespace moekit::dist
