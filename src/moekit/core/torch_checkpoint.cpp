#include "moekit/core/torch_checkpoint.h"

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <variant>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {
namespace {

// A Python value as far as a state dict needs one. Values refer to each
// other by plain pointer and the Unpickler owns them all in one flat arena:
// a pickle that nests a list a million levels deep (or appends a list to
// itself) is then freed without recursion.
struct PyValue;
using PyRef = PyValue*;

struct PyGlobal {
  std::string module, name;
  std::string qualified() const { return module + "." + name; }
};
struct PyTuple {
  std::vector<PyRef> items;
};
struct PyList {
  std::vector<PyRef> items;
};
struct PyDict {
  std::vector<std::pair<PyRef, PyRef>> items;
};
struct PyStorage {
  torch::Tensor flat;  // 1-D, the whole storage
};
struct PyOpaque {  // the result of calling something we do not model
  std::string what;
};
struct PyNone {};

struct PyValue {
  std::variant<PyNone, bool, int64_t, double, std::string, PyTuple, PyList, PyDict, PyGlobal, PyStorage,
               torch::Tensor, PyOpaque>
      v;
  template <typename T>
  const T* get() const { return std::get_if<T>(&v); }
  template <typename T>
  T* get() { return std::get_if<T>(&v); }
};

std::string describe(const PyRef& ref) {
  static const char* names[] = {"None",   "bool",   "int",    "float",   "str",    "tuple",
                                "list",   "dict",   "global", "storage", "tensor", "object"};
  if (const auto* g = ref->get<PyGlobal>()) return "global " + g->qualified();
  if (const auto* o = ref->get<PyOpaque>()) return o->what;
  return names[ref->v.index()];
}

torch::Dtype storage_dtype(const std::string& name, const std::string& where) {
  static const std::map<std::string, torch::Dtype> table = {
      {"FloatStorage", torch::kFloat32}, {"DoubleStorage", torch::kFloat64}, {"HalfStorage", torch::kFloat16},
      {"BFloat16Storage", torch::kBFloat16}, {"LongStorage", torch::kInt64}, {"IntStorage", torch::kInt32},
      {"ShortStorage", torch::kInt16}, {"CharStorage", torch::kInt8}, {"ByteStorage", torch::kUInt8},
      {"BoolStorage", torch::kBool}};
  auto it = table.find(name);
  MOEKIT_CHECK_ARG(it != table.end(), where, ": unsupported storage type torch.", name);
  return it->second;
}

class Unpickler {
 public:
  Unpickler(const std::string& data, caffe2::serialize::PyTorchStreamReader& zip, std::string where)
      : data_(data), zip_(zip), where_(std::move(where)) {}

  PyRef run() {
    while (true) {
      const uint8_t op = u8();
      switch (op) {
        case 0x80: u8(); break;              // PROTO
        case 0x95: bytes(8); break;          // FRAME
        case '.': return pop();              // STOP
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '0': pop(); break;              // POP
        case '1': pop_mark(); break;         // POP_MARK
        case '2': push(top()); break;        // DUP
        case 'N': push(make(PyNone{})); break;
        case 0x88: push(make(true)); break;  // NEWTRUE
        case 0x89: push(make(false)); break; // NEWFALSE
        case 'J': push(make<int64_t>(static_cast<int32_t>(le(4)))); break;  // BININT
        case 'K': push(make<int64_t>(u8())); break;                         // BININT1
        case 'M': push(make<int64_t>(le(2))); break;                        // BININT2
        case 0x8a: push(make(long1())); break;                              // LONG1
        case 'G': push(make(binfloat())); break;                            // BINFLOAT
        case 'X': push(make(bytes(le(4)))); break;                          // BINUNICODE
        case 0x8c: push(make(bytes(u8()))); break;                          // SHORT_BINUNICODE
        case 0x8d: push(make(bytes(le(8)))); break;                         // BINUNICODE8
        case 'B': push(make(bytes(le(4)))); break;                          // BINBYTES
        case 'C': push(make(bytes(u8()))); break;                           // SHORT_BINBYTES
        case ')': push(make(PyTuple{})); break;                             // EMPTY_TUPLE
        case 't': push(make(PyTuple{pop_mark()})); break;                   // TUPLE
        case 0x85: tuple_n(1); break;                                       // TUPLE1
        case 0x86: tuple_n(2); break;                                       // TUPLE2
        case 0x87: tuple_n(3); break;                                       // TUPLE3
        case ']': push(make(PyList{})); break;                              // EMPTY_LIST
        case 'l': push(make(PyList{pop_mark()})); break;                    // LIST
        case 'a': append(pop_vector(1)); break;                             // APPEND
        case 'e': append(pop_mark()); break;                                // APPENDS
        case '}': push(make(PyDict{})); break;                              // EMPTY_DICT
        case 'd': {                                                         // DICT
          PyRef dict = make(PyDict{});
          set_items(dict, pop_mark());
          push(dict);
          break;
        }
        case 's': {                                                         // SETITEM
          std::vector<PyRef> pair = pop_vector(2);
          set_items(top(), std::move(pair));
          break;
        }
        case 'u': {                                                         // SETITEMS
          std::vector<PyRef> items = pop_mark();
          set_items(top(), std::move(items));
          break;
        }
        case 'c': {                                                         // GLOBAL
          std::string module = line(), name = line();
          push(make(PyGlobal{module, name}));
          break;
        }
        case 0x93: {                                                        // STACK_GLOBAL
          PyRef name = pop(), module = pop();
          push(make(PyGlobal{as_string(module), as_string(name)}));
          break;
        }
        case 'R': {                                                         // REDUCE
          PyRef args = pop(), callable = pop();
          push(call(callable, args));
          break;
        }
        case 0x81: {                                                        // NEWOBJ
          PyRef args = pop(), cls = pop();
          push(call(cls, args));
          break;
        }
        case 'b': pop(); break;  // BUILD: object state (e.g. a state dict's _metadata) is not needed
        case 'Q': push(persistent_load(pop())); break;                      // BINPERSID
        case 'q': memo_[u8()] = top(); break;                               // BINPUT
        case 'r': memo_[static_cast<uint32_t>(le(4))] = top(); break;       // LONG_BINPUT
        case 0x94: memo_[static_cast<uint32_t>(memo_.size())] = top(); break;  // MEMOIZE
        case 'h': push(memo(u8())); break;                                  // BINGET
        case 'j': push(memo(static_cast<uint32_t>(le(4)))); break;          // LONG_BINGET
        default:
          fail(str_cat("unsupported pickle opcode 0x", hex(op), " at byte ", pos_ - 1));
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw std::invalid_argument(where_ + ": " + what); }

  static std::string hex(uint8_t v) {
    const char* digits = "0123456789abcdef";
    return std::string{digits[v >> 4], digits[v & 15]};
  }

  uint8_t u8() {
    if (pos_ >= data_.size()) fail("truncated pickle");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t le(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(u8()) << (8 * i);
    return v;
  }
  std::string bytes(uint64_t n) {
    if (n > data_.size() - pos_) fail("truncated pickle");
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) fail("truncated pickle");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  int64_t long1() {
    const uint8_t n = u8();
    if (n > 8) fail("integer too large in pickle");
    uint64_t v = le(n);
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(v);
  }
  double binfloat() {
    uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits = (bits << 8) | u8();  // big-endian
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }

  void push(PyRef v) { stack_.push_back(std::move(v)); }
  PyRef pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("malformed pickle (stack underflow)");
    PyRef v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PyRef& top() {
    if (stack_.empty()) fail("malformed pickle (stack underflow)");
    return stack_.back();
  }
  std::vector<PyRef> pop_vector(size_t n) {
    // As pop() and CPython's unpickler: nothing below the latest mark.
    if (stack_.size() < n || (!marks_.empty() && stack_.size() - n < marks_.back()))
      fail("malformed pickle (stack underflow)");
    std::vector<PyRef> out(stack_.end() - n, stack_.end());
    stack_.resize(stack_.size() - n);
    return out;
  }
  std::vector<PyRef> pop_mark() {
    if (marks_.empty()) fail("malformed pickle (no mark)");
    const size_t mark = marks_.back();
    marks_.pop_back();
    if (mark > stack_.size()) fail("malformed pickle (stack underflow)");
    std::vector<PyRef> out(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return out;
  }
  void tuple_n(size_t n) { push(make(PyTuple{pop_vector(n)})); }
  PyRef memo(uint32_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail(str_cat("malformed pickle (memo key ", key, " unset)"));
    return it->second;
  }
  void append(std::vector<PyRef> items) {
    auto* list = top()->get<PyList>();
    if (!list) fail("malformed pickle (APPEND to a " + describe(top()) + ")");
    for (auto& item : items) list->items.push_back(std::move(item));
  }
  void set_items(const PyRef& target, std::vector<PyRef> items) {
    auto* dict = target->get<PyDict>();
    if (!dict) fail("malformed pickle (SETITEM on a " + describe(target) + ")");
    if (items.size() % 2 != 0) fail("malformed pickle (odd SETITEMS)");
    for (size_t i = 0; i < items.size(); i += 2) dict->items.emplace_back(items[i], items[i + 1]);
  }
  std::string as_string(const PyRef& ref) const {
    const auto* s = ref->get<std::string>();
    if (!s) fail("expected a string in pickle, got " + describe(ref));
    return *s;
  }
  int64_t as_int(const PyRef& ref) const {
    const auto* i = ref->get<int64_t>();
    if (!i) fail("expected an int in pickle, got " + describe(ref));
    return *i;
  }
  std::vector<int64_t> as_ints(const PyRef& ref) const {
    const auto* t = ref->get<PyTuple>();
    if (!t) fail("expected a tuple of ints in pickle, got " + describe(ref));
    std::vector<int64_t> out;
    for (const auto& item : t->items) out.push_back(as_int(item));
    return out;
  }

  PyRef call(const PyRef& callable, const PyRef& args_ref) {
    const auto* fn = callable->get<PyGlobal>();
    const auto* args_tuple = args_ref->get<PyTuple>();
    if (!fn || !args_tuple) return make(PyOpaque{"result of calling a " + describe(callable)});
    const std::vector<PyRef>& args = args_tuple->items;
    const std::string name = fn->qualified();
    if (name == "collections.OrderedDict" || name == "builtins.dict") return make(PyDict{});
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      if (args.size() < 4) fail(name + " with " + std::to_string(args.size()) + " arguments");
      return make(rebuild_tensor(args[0], as_int(args[1]), as_ints(args[2]), as_ints(args[3])));
    }
    if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
      if (args.empty() || !args[0]->get<torch::Tensor>()) fail(name + " without a tensor");
      return args[0];
    }
    // Anything else (an optimizer's class, argparse.Namespace, ...) becomes
    // an opaque value: only an error if a tensor is later built from it.
    return make(PyOpaque{"object " + name});
  }

  torch::Tensor rebuild_tensor(const PyRef& storage_ref, int64_t offset, const std::vector<int64_t>& size,
                               const std::vector<int64_t>& stride) {
    const auto* storage = storage_ref->get<PyStorage>();
    if (!storage) fail("tensor built from a " + describe(storage_ref) + ", not a storage");
    if (size.size() != stride.size()) fail("tensor size and stride differ in rank");
    // Bounds: the furthest element must lie inside the storage.
    int64_t last = offset;
    bool empty = false;
    for (size_t i = 0; i < size.size(); ++i) {
      if (size[i] < 0 || stride[i] < 0) fail("negative tensor size or stride");
      if (size[i] == 0) empty = true;
      last += (size[i] - 1) * stride[i];
    }
    if (empty) return torch::empty(size, storage->flat.options());
    if (offset < 0 || last >= storage->flat.numel()) fail("tensor reaches outside its storage");
    return storage->flat.as_strided(size, stride, offset).clone();
  }

  PyRef persistent_load(const PyRef& pid_ref) {
    const auto* pid = pid_ref->get<PyTuple>();
    if (!pid || pid->items.size() < 5 || as_string(pid->items[0]) != "storage")
      fail("unsupported persistent id in pickle (" + describe(pid_ref) + ")");
    const auto* type = pid->items[1]->get<PyGlobal>();
    if (!type) fail("storage type is a " + describe(pid->items[1]));
    const std::string key = as_string(pid->items[2]);
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const torch::Dtype dtype = storage_dtype(type->name, where_);
    const int64_t numel = as_int(pid->items[4]);
    const std::string record = "data/" + key;
    if (!zip_.hasRecord(record)) fail("missing record " + record);
    auto [data, nbytes] = zip_.getRecord(record);
    const size_t element = c10::elementSize(dtype);
    if (numel < 0 || nbytes < static_cast<size_t>(numel) * element)
      fail(str_cat("record ", record, " holds ", nbytes, " bytes, fewer than ", numel, " elements need"));
    torch::Tensor flat = torch::empty({numel}, torch::TensorOptions().dtype(dtype));
    if (numel > 0) std::memcpy(flat.data_ptr(), data.get(), static_cast<size_t>(numel) * element);
    PyRef ref = make(PyStorage{flat});
    storages_[key] = ref;
    return ref;
  }

  template <typename T>
  PyRef make(T value) {
    arena_.push_back(std::make_unique<PyValue>());
    arena_.back()->v = std::move(value);
    return arena_.back().get();
  }

  std::vector<std::unique_ptr<PyValue>> arena_;  // first member: destroyed last
  const std::string& data_;
  caffe2::serialize::PyTorchStreamReader& zip_;
  std::string where_;
  size_t pos_ = 0;
  std::vector<PyRef> stack_;
  std::vector<size_t> marks_;
  std::map<uint32_t, PyRef> memo_;
  std::map<std::string, PyRef> storages_;
};

// LibTorch's MemoryReadAdapter copies whatever range the zip reader asks
// for; a crafted central directory points it past the end of the buffer
// (found by fuzz/fuzz_pickle). This one copies only what lies inside and
// reports the short read, which the zip reader turns into an error.
class BoundedReadAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  BoundedReadAdapter(const char* data, size_t size) : data_(data), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* what = "") const override {
    (void)what;
    if (pos >= size_) return 0;
    const size_t count = static_cast<size_t>(std::min<uint64_t>(n, size_ - pos));
    std::memcpy(buf, data_ + pos, count);
    return count;
  }

 private:
  const char* data_;
  size_t size_;
};

void collect_tensors(const PyRef& value, const std::string& prefix, TensorMap& out, int depth) {
  if (depth > 8) return;
  if (const auto* t = value->get<torch::Tensor>()) {
    out[prefix] = *t;
  } else if (const auto* dict = value->get<PyDict>()) {
    for (const auto& [key, item] : dict->items) {
      std::string name;
      if (const auto* s = key->get<std::string>()) name = *s;
      else if (const auto* i = key->get<int64_t>()) name = std::to_string(*i);
      else continue;
      collect_tensors(item, prefix.empty() ? name : prefix + "." + name, out, depth + 1);
    }
  } else if (const auto* list = value->get<PyList>()) {
    for (size_t i = 0; i < list->items.size(); ++i)
      collect_tensors(list->items[i], prefix.empty() ? std::to_string(i) : prefix + "." + std::to_string(i), out,
                      depth + 1);
  }
}

}  // namespace

TensorMap parse_torch_checkpoint(const std::string& bytes, const std::string& where) {
  MOEKIT_CHECK_ARG(bytes.size() >= 4 && bytes.compare(0, 4, "PK\x03\x04") == 0, where,
                   ": not a PyTorch zip checkpoint (a legacy torch.save file or another format; re-save it with "
                   "torch >= 1.6)");
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip;
  std::string pickle;
  try {
    zip = std::make_unique<caffe2::serialize::PyTorchStreamReader>(
        std::make_shared<BoundedReadAdapter>(bytes.data(), bytes.size()));
    MOEKIT_CHECK_ARG(zip->hasRecord("data.pkl"), where, ": zip archive has no data.pkl (not a torch.save checkpoint)");
    auto [data, size] = zip->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const c10::Error& e) {
    std::string message = e.what_without_backtrace();
    message = message.substr(0, message.find('\n'));
    throw std::invalid_argument(where + ": unreadable PyTorch zip checkpoint (" + message + ")");
  }
  TensorMap out;
  try {
    Unpickler unpickler(pickle, *zip, where);
    collect_tensors(unpickler.run(), "", out, 0);
  } catch (const c10::Error& e) {
    std::string message = e.what_without_backtrace();
    throw std::invalid_argument(where + ": corrupt checkpoint (" + message.substr(0, message.find('\n')) + ")");
  }
  MOEKIT_CHECK_ARG(!out.empty(), where, ": checkpoint holds no tensors");
  return out;
}

TensorMap read_torch_checkpoint(const std::string& path) { return parse_torch_checkpoint(read_file(path), path); }

}  // namespace moekit
