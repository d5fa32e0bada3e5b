#include "moekit/dist/grad_sync.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "moekit/core/check.h"

namespace moekit::dist {

namespace {

// Consecutive runs of same-dtype tensors of at most `bucket_bytes` together
// (a larger tensor alone); `visit` gets each run.
template <class Visit>
void for_each_bucket(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes, Visit visit) {
  std::vector<torch::Tensor> bucket;
  int64_t bytes = 0;
  for (const torch::Tensor& t : tensors) {
    const int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
    if (!bucket.empty() && (bytes + size > bucket_bytes || bucket.front().scalar_type() != t.scalar_type())) {
      visit(bucket);
      bucket.clear();
      bytes = 0;
    }
    bucket.push_back(t);
    bytes += size;
  }
  if (!bucket.empty()) visit(bucket);
}

torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> flat;
  flat.reserve(tensors.size());
  for (const torch::Tensor& t : tensors) flat.push_back(t.detach().reshape(-1));
  return torch::cat(flat);
}

void unflatten_into(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
  int64_t offset = 0;
  for (const torch::Tensor& t : tensors) {
    t.detach().copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

// Each tensor summed over `group` and divided by `divisor`, in place, in buckets.
void all_reduce_divided(const Group& group, const std::vector<torch::Tensor>& tensors, double divisor,
                        int64_t bucket_bytes) {
  for_each_bucket(tensors, bucket_bytes, [&](const std::vector<torch::Tensor>& bucket) {
    std::vector<torch::Tensor> flat{flatten(bucket)};
    group.all_reduce_sum(flat);
    flat[0].div_(divisor);
    unflatten_into(flat[0], bucket);
  });
}

}  // namespace

void broadcast_parameters(const Group& group, const std::vector<torch::Tensor>& params, int root) {
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  for_each_bucket(params, 25 << 20, [&](const std::vector<torch::Tensor>& bucket) {
    std::vector<torch::Tensor> flat{flatten(bucket)};
    group.broadcast(flat, root);
    unflatten_into(flat[0], bucket);
  });
}

void all_reduce_gradients(const Group& group, const std::vector<torch::Tensor>& params, double divisor,
                          int64_t bucket_bytes) {
  MOEKIT_CHECK_ARG(divisor > 0, "dist: gradients divided by ", divisor);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  grads.reserve(params.size());
  for (const torch::Tensor& p : params) {
    torch::Tensor& g = const_cast<torch::Tensor&>(p).mutable_grad();
    if (!g.defined()) g = torch::zeros_like(p);
    grads.push_back(g);
  }
  if (group.size() == 1) {
    if (divisor != 1.0)
      for (torch::Tensor& g : grads) g.div_(divisor);
    return;
  }
  all_reduce_divided(group, grads, divisor, bucket_bytes);
}

GradientReducer::GradientReducer(std::shared_ptr<const Group> group, std::vector<torch::Tensor> params,
                                 int64_t bucket_bytes, int64_t first_bucket_bytes)
    : group_(std::move(group)), params_(std::move(params)), bucket_of_(params_.size()), ready_(params_.size()) {
  MOEKIT_CHECK_ARG(bucket_bytes > 0 && first_bucket_bytes > 0, "dist: gradient buckets of ", first_bucket_bytes,
                   " / ", bucket_bytes, " bytes");
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k];
    MOEKIT_CHECK_ARG(p.requires_grad() && p.is_leaf(), "dist: the gradient reducer takes leaf parameters");
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    const int64_t cap = buckets_.size() == 1 ? first_bucket_bytes : bucket_bytes;
    const bool joins = !buckets_.empty() && bytes + size <= cap &&
                       params_[buckets_.back().params.front()].scalar_type() == p.scalar_type() &&
                       params_[buckets_.back().params.front()].device() == p.device();
    if (!joins) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().params.push_back(k);
    bucket_of_[k] = buckets_.size() - 1;
    bytes += size;
  }
  reset();
  if (group_->size() == 1) return;  // nothing to reduce
  for (Bucket& b : buckets_) {
    int64_t numel = 0;
    for (size_t k : b.params) numel += params_[k].numel();
    b.flat = torch::zeros({numel}, params_[b.params.front()].options().requires_grad(false));
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    // The accumulator is kept alive here: a parameter's AccumulateGrad node
    // is otherwise made anew by each graph, without the hook.
    std::shared_ptr<torch::autograd::Node> accumulator = torch::autograd::impl::grad_accumulator(params_[k]);
    const uintptr_t key = accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, k](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          gradient_ready(k);
          return outputs;
        }));
    hooks_.emplace_back(std::move(accumulator), key);
  }
}

GradientReducer::~GradientReducer() {
  for (auto& [node, key] : hooks_) node->del_post_hook(key);
  // Buffers still being reduced (a step left by an exception) are waited
  // for before they are freed.
  for (Bucket& b : buckets_) {
    if (!b.pending) continue;
    try {
      b.pending->wait();
    } catch (const std::exception&) {
      // the run is failing already; its first error is the one reported
    }
  }
}

void GradientReducer::arm() {
  MOEKIT_CHECK(!armed_, "dist: the gradient reducer is armed already");
  armed_ = true;
  started_in_backward_ = 0;
}

void GradientReducer::reset() {
  next_ = 0;
  std::fill(ready_.begin(), ready_.end(), false);
  for (Bucket& b : buckets_) b.waiting = b.params.size();
}

void GradientReducer::gradient_ready(size_t k) {
  if (!armed_ || ready_[k]) return;
  ready_[k] = true;
  --buckets_[bucket_of_[k]].waiting;
  while (next_ < buckets_.size() && buckets_[next_].waiting == 0) {
    start(buckets_[next_++]);
    ++started_in_backward_;
  }
}

void GradientReducer::start(Bucket& b) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (size_t k : b.params) {
    torch::Tensor& p = params_[k];
    const torch::Tensor slice = b.flat.narrow(0, offset, p.numel());
    offset += p.numel();
    torch::Tensor& g = p.mutable_grad();
    // A gradient that is already this bucket's view (every step after the
    // first while the optimizer zeroes gradients in place) is reduced where
    // it lies; any other (the first step, or after gradients were set to
    // none) is copied in once and then replaced by the view, as DDP's
    // gradient_as_bucket_view does.
    if (g.defined() && g.data_ptr() == slice.data_ptr()) continue;
    if (g.defined()) slice.copy_(g.reshape(-1));
    else slice.zero_();
    g = slice.view(p.sizes());
  }
  std::vector<torch::Tensor> tensors{b.flat};
  b.pending = group_->all_reduce_sum_async(tensors);
}

void GradientReducer::finish(double divisor) {
  MOEKIT_CHECK_ARG(divisor > 0, "dist: gradients divided by ", divisor);
  if (!armed_) started_in_backward_ = 0;
  armed_ = false;
  torch::NoGradGuard no_grad;
  if (group_->size() == 1) {
    for (torch::Tensor& p : params_) {
      torch::Tensor& g = p.mutable_grad();
      if (!g.defined()) g = torch::zeros_like(p);
      else if (divisor != 1.0) g.div_(divisor);
    }
    return;
  }
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  for (Bucket& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
    b.flat.div_(divisor);  // every gradient of the bucket is a view of it (start)
  }
  reset();
}

void all_reduce_mean(const Group& group, const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  all_reduce_divided(group, tensors, static_cast<double>(group.size()), bucket_bytes);
}

}  // namespace moekit::dist
