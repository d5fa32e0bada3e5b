#pragma once
// Reads checkpoints written by PyTorch's `torch.save` (the zip format of
// PyTorch >= 1.6) without Python: the zip container through LibTorch's own
// PyTorchStreamReader, the pickle through a small unpickler of our own.
//
// LibTorch 1.13's `torch::pickle_load` turns `collections.OrderedDict` into
// None, so it cannot read `torch.save(model.state_dict())`, which is what
// WeNet and most trainers write. This reader understands exactly what a
// state dict needs (dicts, OrderedDicts, tuples, lists, numbers, strings,
// `_rebuild_tensor_v2`, `_rebuild_parameter`, typed storages) and refuses
// anything else with the name of what it met.
#include <torch/torch.h>

#include <string>

#include "moekit/core/safetensors.h"

namespace moekit {

// Every tensor reachable from the pickled object, keyed by its dotted path:
// a state dict gives its own keys; a dict such as {"model": state_dict,
// "step": 3} gives "model.<key>". Non-tensor leaves are skipped.
TensorMap read_torch_checkpoint(const std::string& path);

// The same from bytes in memory (`where` names them in errors).
TensorMap parse_torch_checkpoint(const std::string& bytes, const std::string& where);

}  // namespace moekit
