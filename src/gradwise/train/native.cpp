// fit()'s native helpers (see gradwise/train/native.py): the NaN/inf guard and the step's
// bookkeeping in one call. Only PyTorch's public extension API is used: THPVariable_Check and
// THPVariable_Unpack for the Python tensors, at::Tensor's accessors for what they hold.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>

namespace {

// Whether n values of `Bits` hold an infinity or a NaN: their exponent bits all set. Branch-free,
// so that the compiler vectorizes it.
template <typename Bits>
inline bool any_nonfinite(const void* data, std::int64_t n, Bits exponent) {
  const auto* v = static_cast<const Bits*>(data);
  Bits bad = 0;
  for (std::int64_t i = 0; i < n; ++i) bad |= ((v[i] & exponent) == exponent);
  return bad != 0;
}

// The scans, each compiled twice: for AVX2 (twice the width, half the time of the baseline on
// a 26K-element gradient) and for the baseline x86-64, the one the running CPU can do chosen at
// load time. Only the instruction set differs, so the answer is the same.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__APPLE__)
#define GRADWISE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GRADWISE_CLONES
#endif
GRADWISE_CLONES bool any_nonfinite32(const void* data, std::int64_t n, std::uint32_t exponent) {
  return any_nonfinite<std::uint32_t>(data, n, exponent);
}
GRADWISE_CLONES bool any_nonfinite64(const void* data, std::int64_t n, std::uint64_t exponent) {
  return any_nonfinite<std::uint64_t>(data, n, exponent);
}
GRADWISE_CLONES bool any_nonfinite16(const void* data, std::int64_t n, std::uint16_t exponent) {
  return any_nonfinite<std::uint16_t>(data, n, exponent);
}

// Whether t is a plain, dense, contiguous CPU tensor whose memory this file may read.
// Subclasses with Python dispatch (DTensor, ...) are left alone before anything is asked of them
// that could call into Python.
bool readable(const at::Tensor& t) {
  return t.defined() && !t.unsafeGetTensorImpl()->is_python_dispatch() &&
         t.layout() == at::kStrided && t.has_storage() && t.is_cpu() && t.is_contiguous() &&
         !t.is_conj() && !t.is_neg();
}

// 1: finite, 0: holds an infinity or a NaN, -1: cannot tell here (not readable, or not a float
// tensor).
int finite(const at::Tensor& t) {
  if (!readable(t)) return -1;
  const std::int64_t n = t.numel();
  if (n == 0) return 1;
  const void* data = t.const_data_ptr();
  switch (t.scalar_type()) {
    case at::kFloat:
      return !any_nonfinite32(data, n, 0x7f800000u);
    case at::kDouble:
      return !any_nonfinite64(data, n, 0x7ff0000000000000ull);
    case at::kHalf:
      return !any_nonfinite16(data, n, 0x7c00u);
    case at::kBFloat16:
      return !any_nonfinite16(data, n, 0x7f80u);
    default:
      return -1;
  }
}

// The tensor a Python object holds, or nullptr when it holds none.
const at::Tensor* tensor_of(PyObject* obj) {
  return THPVariable_Check(obj) ? &THPVariable_Unpack(obj) : nullptr;
}

// The guard: 1 if the loss and the .grad of every parameter in the list `params` (an undefined
// .grad is skipped) are finite, 0 if some value is an infinity or a NaN, -1 if this cannot tell
// (the caller checks another way).
int all_finite(PyObject* params, const at::Tensor& loss) {
  int answer = finite(loss);
  if (answer != 1) return answer;
  const Py_ssize_t n = PyList_GET_SIZE(params);
  for (Py_ssize_t i = 0; i < n; ++i) {
    const at::Tensor* p = tensor_of(PyList_GET_ITEM(params, i));
    if (p == nullptr) return -1;
    const at::Tensor& g = p->grad();
    if (!g.defined()) continue;
    answer = finite(g);
    if (answer != 1) return answer;
  }
  return 1;
}

// A one-element float tensor's value (false: not one this can read).
bool scalar_value(const at::Tensor& t, double* value) {
  if (!readable(t) || t.numel() != 1) return false;
  const void* data = t.const_data_ptr();
  switch (t.scalar_type()) {
    case at::kFloat:
      *value = *static_cast<const float*>(data);
      return true;
    case at::kDouble:
      *value = *static_cast<const double*>(data);
      return true;
    case at::kHalf:
      *value = static_cast<float>(*static_cast<const c10::Half*>(data));
      return true;
    case at::kBFloat16:
      *value = static_cast<float>(*static_cast<const c10::BFloat16*>(data));
      return true;
    default:
      return false;
  }
}

// How many rows of `out` (rows x cols) have their largest value at the column their label
// names: torch.argmax's choice, the first of equal maxima, a NaN above everything.
template <typename T>
std::int64_t right_of(const T* out, const std::int64_t* labels, std::int64_t rows,
                      std::int64_t cols) {
  std::int64_t right = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* row = out + r * cols;
    std::int64_t best = 0;
    for (std::int64_t c = 1; c < cols && row[best] == row[best]; ++c)
      if (row[c] > row[best] || row[c] != row[c]) best = c;
    right += best == labels[r];
  }
  return right;
}

// The correct predictions of a batch (`out`: rows x classes, float or double; `labels`: int64
// class indices), or -1 when they are not of that form (the caller counts them another way).
std::int64_t count_right(const at::Tensor& out, const at::Tensor& labels) {
  if (!readable(out) || !readable(labels) || out.dim() != 2 || labels.dim() != 1 ||
      labels.scalar_type() != at::kLong || out.size(0) != labels.size(0) || out.size(1) < 1)
    return -1;
  const auto* y = labels.const_data_ptr<std::int64_t>();
  switch (out.scalar_type()) {
    case at::kFloat:
      return right_of(out.const_data_ptr<float>(), y, out.size(0), out.size(1));
    case at::kDouble:
      return right_of(out.const_data_ptr<double>(), y, out.size(0), out.size(1));
    default:
      return -1;
  }
}

bool check_args(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t expected, const char* name) {
  if (nargs != expected) {
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, expected, nargs);
    return false;
  }
  if (!PyList_Check(args[0])) {
    PyErr_Format(PyExc_TypeError, "%s: params must be a list of tensors", name);
    return false;
  }
  if (!THPVariable_Check(args[1])) {
    PyErr_Format(PyExc_TypeError, "%s: loss must be a tensor", name);
    return false;
  }
  return true;
}

// all_finite(params, loss) -> 1 / 0 / -1 (see all_finite above).
PyObject* py_all_finite(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(args, nargs, 2, "all_finite")) return nullptr;
  try {
    return PyLong_FromLong(all_finite(args[0], THPVariable_Unpack(args[1])));
  } catch (const std::exception&) {
    return PyLong_FromLong(-1);
  }
}

// record(params, loss, out, labels, right, losses): fit()'s bookkeeping of one step in one call.
// The guard of all_finite, then the loss's value appended to the list `losses` and, when `out`,
// `labels` and `right` (a 0-d int64 CPU tensor) are tensors, the batch's correct predictions
// added to `right`. Returns 3 (finite, recorded, counted), 2 (finite, recorded, not counted: the
// caller counts), 0 (an infinity or a NaN: nothing recorded), -1 (cannot tell: nothing recorded,
// the caller checks and records another way).
PyObject* py_record(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(args, nargs, 6, "record")) return nullptr;
  PyObject* losses = args[5];
  if (!PyList_Check(losses)) {
    PyErr_SetString(PyExc_TypeError, "record: losses must be a list");
    return nullptr;
  }
  const at::Tensor* out = tensor_of(args[2]);
  const at::Tensor* labels = tensor_of(args[3]);
  const at::Tensor* right = tensor_of(args[4]);
  int answer = -1;
  double value = 0;
  std::int64_t counted = -1;
  try {
    const at::Tensor& loss = THPVariable_Unpack(args[1]);
    answer = all_finite(args[0], loss);
    if (answer == 1 && !scalar_value(loss, &value)) answer = -1;
    if (answer == 1 && out != nullptr && labels != nullptr && right != nullptr &&
        readable(*right) && right->scalar_type() == at::kLong && right->numel() == 1)
      counted = count_right(*out, *labels);
  } catch (const std::exception&) {
    answer = -1;
  }
  if (answer != 1) return PyLong_FromLong(answer);
  PyObject* item = PyFloat_FromDouble(value);
  if (item == nullptr) return nullptr;
  const int failed = PyList_Append(losses, item);
  Py_DECREF(item);
  if (failed) return nullptr;
  if (counted < 0) return PyLong_FromLong(2);
  *right->data_ptr<std::int64_t>() += counted;
  return PyLong_FromLong(3);
}

PyMethodDef methods[] = {
    {"all_finite", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_all_finite)),
     METH_FASTCALL, "all_finite(params, loss) -> 1 finite / 0 not / -1 cannot tell"},
    {"record", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_record)),
     METH_FASTCALL,
     "record(params, loss, out, labels, right, losses) -> 3 counted / 2 recorded / 0 not finite "
     "/ -1 cannot tell"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradwise_train_native", nullptr, -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit_gradwise_train_native() { return PyModule_Create(&module); }
