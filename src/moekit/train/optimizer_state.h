#pragma once

#include <torch/torch.h>

#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

namespace moekit {

// The key type of a LibTorch optimizer's per-parameter state map: the
// parameter's TensorImpl address printed as a string in LibTorch 1.x, the
// address itself (void*) in 2.x.
using OptimizerStateKey =
    typename std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

// The key `optimizer.state()` holds parameter `p`'s state under, whichever
// of the two this LibTorch uses.
template <typename Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream out;  // as LibTorch 1.x prints it (operator<< of the pointer)
    out << p.unsafeGetTensorImpl();
    return out.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

}  // namespace moekit
