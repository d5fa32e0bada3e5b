// The torch.save reader (core/torch_checkpoint.h) on checkpoints this test
// writes itself: LibTorch's zip writer around pickles built opcode by opcode
// the way torch.save (protocol 2) lays out a state dict, so every feature
// the reader claims is checked without the WeNet fixture: storages shared by
// views with offsets and strides, the memo, nested containers, persistent
// ids, parameters, and each refusal with the message that names it.
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "moekit/core/torch_checkpoint.h"
#include "test_util.h"

namespace moekit {
namespace {

// Pickle opcodes, written as Python's pickle module (protocol 2) writes them.
class Pickle {
 public:
  Pickle() { raw("\x80\x02"); }  // PROTO 2
  Pickle& raw(const std::string& bytes) {
    out_ += bytes;
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) { return raw("c" + module + "\n" + name + "\n"); }
  Pickle& str(const std::string& s) {  // BINUNICODE
    raw("X");
    le(static_cast<uint32_t>(s.size()), 4);
    return raw(s);
  }
  Pickle& int1(uint8_t v) { return raw(std::string("K") + static_cast<char>(v)); }  // BININT1
  Pickle& mark() { return raw("("); }
  Pickle& tuple() { return raw("t"); }
  Pickle& empty_tuple() { return raw(")"); }
  Pickle& empty_dict() { return raw("}"); }
  Pickle& empty_list() { return raw("]"); }
  Pickle& appends() { return raw("e"); }
  Pickle& setitems() { return raw("u"); }
  Pickle& reduce() { return raw("R"); }
  Pickle& put(uint8_t key) { return raw(std::string("q") + static_cast<char>(key)); }  // BINPUT
  Pickle& get(uint8_t key) { return raw(std::string("h") + static_cast<char>(key)); }  // BINGET
  Pickle& ints(const std::vector<uint8_t>& values) {
    mark();
    for (uint8_t v : values) int1(v);
    return tuple();
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").empty_tuple().reduce(); }
  // ('storage', torch.<type>, key, 'cpu', numel) as a persistent id (BINPERSID).
  Pickle& storage(const std::string& type, const std::string& key, uint8_t numel) {
    mark().str("storage").global("torch", type).str(key).str("cpu").int1(numel).tuple();
    return raw("Q");
  }
  // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())
  Pickle& tensor(const std::string& type, const std::string& key, uint8_t numel, uint8_t offset,
                 const std::vector<uint8_t>& size, const std::vector<uint8_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    storage(type, key, numel).int1(offset).ints(size).ints(stride).raw("\x89");  // NEWFALSE
    return ordered_dict().tuple().reduce();
  }
  std::string stop() const { return out_ + "."; }

 private:
  void le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }
  std::string out_;
};

// A torch.save zip: data.pkl and the storages as data/<key>.
std::string checkpoint(const std::string& pickle, const std::map<std::string, std::string>& storages) {
  std::string bytes;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    bytes.append(static_cast<const char*>(data), n);
    return n;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [key, data] : storages) writer.writeRecord("data/" + key, data.data(), data.size());
  writer.writeEndOfFile();
  return bytes;
}

template <typename T>
std::string storage_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

const std::vector<float> kSix = {0, 1, 2, 3, 4, 5};

TEST(TorchCheckpoint, StateDictWithSharedStorageViewsAndTheMemo) {
  // {"w": [2, 3] over storage 0, "w_t": its transpose (stride 1, 3) from offset
  //  0, "tail": [2] from offset 4, "again": memo 1 (w once more)}
  Pickle p;
  p.ordered_dict().put(0).mark();
  p.str("w").tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}).put(1);
  p.str("w_t").tensor("FloatStorage", "0", 6, 0, {3, 2}, {1, 3});
  p.str("tail").tensor("FloatStorage", "0", 6, 4, {2}, {1});
  p.str("again").get(1);
  p.setitems();
  const TensorMap t = parse_torch_checkpoint(checkpoint(p.stop(), {{"0", storage_bytes(kSix)}}), "mem");
  ASSERT_EQ(t.size(), 4u);
  const torch::Tensor w = torch::tensor(kSix).view({2, 3});
  EXPECT_TRUE(torch::equal(t.at("w"), w));
  EXPECT_TRUE(torch::equal(t.at("w_t"), w.t()));
  EXPECT_TRUE(torch::equal(t.at("tail"), torch::tensor({4.0f, 5.0f})));
  EXPECT_TRUE(torch::equal(t.at("again"), w));
  // Views of one storage come back as tensors of their own.
  EXPECT_NE(t.at("w").data_ptr(), t.at("w_t").data_ptr());
}

TEST(TorchCheckpoint, NestedContainersGiveDottedNamesAndSkipOtherLeaves) {
  // {"model": OrderedDict{"layer.bias": Parameter(int64 [3])},
  //  "step": 7, "name": "run", "blocks": [float [2], float [2]]}
  Pickle p;
  p.empty_dict().mark();
  p.str("model").ordered_dict().mark().str("layer.bias");
  p.global("torch._utils", "_rebuild_parameter").mark();
  p.tensor("LongStorage", "1", 3, 0, {3}, {1}).raw("\x88").ordered_dict().tuple().reduce();  // requires_grad True
  p.setitems();
  p.str("step").int1(7).str("name").str("run");
  p.str("blocks").empty_list().mark();
  p.tensor("FloatStorage", "0", 6, 0, {2}, {1}).tensor("FloatStorage", "0", 6, 2, {2}, {2});
  p.appends();
  p.setitems();
  const TensorMap t = parse_torch_checkpoint(
      checkpoint(p.stop(), {{"0", storage_bytes(kSix)}, {"1", storage_bytes(std::vector<int64_t>{-1, 0, 9})}}), "m");
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t.at("model.layer.bias").scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(t.at("model.layer.bias"), torch::tensor({-1, 0, 9}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(t.at("blocks.0"), torch::tensor({0.0f, 1.0f})));
  EXPECT_TRUE(torch::equal(t.at("blocks.1"), torch::tensor({2.0f, 4.0f})));
}

TEST(TorchCheckpoint, RefusesWhatItCannotReadByName) {
  const std::map<std::string, std::string> six = {{"0", storage_bytes(kSix)}};
  auto error = [](const std::string& bytes) {
    return error_of<std::invalid_argument>([&] { parse_torch_checkpoint(bytes, "ckpt.pt"); });
  };
  auto with = [&](const std::function<void(Pickle&)>& body, const std::map<std::string, std::string>& storages) {
    Pickle p;
    p.ordered_dict().mark().str("w");
    body(p);
    p.setitems();
    return error(checkpoint(p.stop(), storages));
  };
  auto tensor = [](Pickle& p) { p.tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}); };
  EXPECT_EQ(with(tensor, six), "");  // the baseline reads

  EXPECT_NE(error("not a zip at all").find("ckpt.pt: not a PyTorch zip checkpoint"), std::string::npos);
  EXPECT_NE(with([](Pickle& p) { p.tensor("FloatStorage", "0", 6, 1, {2, 3}, {3, 1}); }, six)
                .find("tensor reaches outside its storage"),
            std::string::npos);
  EXPECT_NE(with([](Pickle& p) { p.tensor("ComplexFloatStorage", "0", 6, 0, {2}, {1}); }, six)
                .find("unsupported storage type torch.ComplexFloatStorage"),
            std::string::npos);
  EXPECT_NE(with(tensor, {}).find("missing record data/0"), std::string::npos);
  EXPECT_NE(with(tensor, {{"0", storage_bytes(std::vector<float>{1, 2})}}).find("fewer than 6 elements need"),
            std::string::npos);
  EXPECT_NE(with([](Pickle& p) { p.mark().str("cuda_ipc").tuple().raw("Q"); }, six).find("unsupported persistent id"),
            std::string::npos);
  EXPECT_NE(with([](Pickle& p) { p.get(9); }, six).find("memo key 9 unset"), std::string::npos);
  EXPECT_NE(with([](Pickle& p) { p.raw("\xff"); }, six).find("unsupported pickle opcode 0xff"), std::string::npos);
  // TUPLE2 taking items from below a MARK, then the MARK's own TUPLE (a
  // fuzzer's input: the mark pointed past the stack's end).
  EXPECT_NE(with([](Pickle& p) { p.str("a").str("b").mark().raw("\x86").tuple(); }, six)
                .find("malformed pickle (stack underflow)"),
            std::string::npos);
  auto from_string = [](Pickle& p) {
    p.global("torch._utils", "_rebuild_tensor_v2").mark().str("x").int1(0).ints({1}).ints({1}).tuple().reduce();
  };
  EXPECT_NE(with(from_string, six).find("tensor built from a str, not a storage"), std::string::npos);
  // A pickle cut short, and one that holds no tensor.
  Pickle cut;
  cut.ordered_dict().mark().str("w");
  EXPECT_NE(error(checkpoint(cut.stop().substr(0, 12), six)).find("truncated pickle"), std::string::npos);
  Pickle empty;
  empty.ordered_dict().mark().str("step").int1(3).setitems();
  EXPECT_NE(error(checkpoint(empty.stop(), {})).find("holds no tensors"), std::string::npos);
}

}  // namespace
}  // namespace moekit
