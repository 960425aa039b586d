// gradwise's native helpers, compiled once per machine into a small Python extension module (see
// gradwise/optim/native.py). Each replaces a per-step Python loop over tensors whose cost, on a
// model of many small tensors, was more than the work itself.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <c10/core/TensorImpl.h>
#include <c10/core/UndefinedTensorImpl.h>

#include <cstdint>

namespace {
// An at::Tensor holds exactly one intrusive_ptr<TensorImpl>: its first word is the TensorImpl.
inline const c10::TensorImpl* impl_of(const at::Tensor& t) {
  return *reinterpret_cast<const c10::TensorImpl* const*>(&t);
}

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
bool readable(const c10::TensorImpl* t) {
  return !t->is_python_dispatch() && t->layout() == c10::kStrided && t->has_storage() &&
         t->device_type() == c10::DeviceType::CPU && t->is_contiguous();
}

// 1: finite, 0: holds an infinity or a NaN, -1: cannot tell here (not readable, or not a float
// tensor).
int finite(const c10::TensorImpl* t) {
  if (!readable(t)) return -1;
  const std::int64_t n = t->numel();
  if (n == 0) return 1;
  const void* data = t->data();
  switch (t->dtype().toScalarType()) {
    case c10::ScalarType::Float:
      return !any_nonfinite32(data, n, 0x7f800000u);
    case c10::ScalarType::Double:
      return !any_nonfinite64(data, n, 0x7ff0000000000000ull);
    case c10::ScalarType::Half:
      return !any_nonfinite16(data, n, 0x7c00u);
    case c10::ScalarType::BFloat16:
      return !any_nonfinite16(data, n, 0x7f80u);
    default:
      return -1;
  }
  return -1;
}

// The flat path's layout check. params[i]: the TensorImpl of parameter i (Python: p._cdata;
// stable across p.data = ...), ptrs[i]: where its data must start, grads[i]: the TensorImpl of
// its flat gradient view. Returns 0 if a parameter no longer lives at its place in the flat
// buffer, 1 if the parameters do but a .grad is not its view (None, or replaced), 2 if both hold.
std::int64_t layout(std::int64_t n, const std::int64_t* params, const std::int64_t* ptrs,
                    const std::int64_t* grads) try {
  for (std::int64_t i = 0; i < n; ++i) {
    auto* p = reinterpret_cast<const c10::TensorImpl*>(params[i]);
    if (reinterpret_cast<std::int64_t>(p->data()) != ptrs[i]) return 0;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    auto* p = reinterpret_cast<const c10::TensorImpl*>(params[i]);
    if (reinterpret_cast<std::int64_t>(impl_of(p->grad())) != grads[i]) return 1;
  }
  return 2;
} catch (...) {  // "moved": the caller lays out again
  return 0;
}

// The training loop's NaN/inf guard: the loss (a TensorImpl) and the .grad of each of n
// parameters (their TensorImpls; an undefined .grad is skipped). 1: all finite, 0: some value is
// an infinity or a NaN, -1: cannot tell here (the caller checks another way).
std::int64_t all_finite(std::int64_t n, const std::int64_t* params, std::int64_t loss) try {
  int answer = finite(reinterpret_cast<const c10::TensorImpl*>(loss));
  if (answer != 1) return answer;
  for (std::int64_t i = 0; i < n; ++i) {
    const at::Tensor& grad = reinterpret_cast<const c10::TensorImpl*>(params[i])->grad();
    const c10::TensorImpl* g = impl_of(grad);
    if (g == nullptr || g == c10::UndefinedTensorImpl::singleton()) continue;
    answer = finite(g);
    if (answer != 1) return answer;
  }
  return 1;
} catch (...) {  // the caller checks another way
  return -1;
}

// A one-element float tensor's value (false: not one this can read).
bool scalar_value(const c10::TensorImpl* t, double* value) {
  if (!readable(t) || t->numel() != 1) return false;
  const void* data = t->data();
  switch (t->dtype().toScalarType()) {
    case c10::ScalarType::Float:
      *value = *static_cast<const float*>(data);
      return true;
    case c10::ScalarType::Double:
      *value = *static_cast<const double*>(data);
      return true;
    case c10::ScalarType::Half:
      *value = static_cast<float>(*static_cast<const c10::Half*>(data));
      return true;
    case c10::ScalarType::BFloat16:
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
std::int64_t count_right(const c10::TensorImpl* out, const c10::TensorImpl* labels) {
  if (!readable(out) || !readable(labels) || out->dim() != 2 || labels->dim() != 1 ||
      labels->dtype().toScalarType() != c10::ScalarType::Long || out->size(0) != labels->size(0) ||
      out->size(1) < 1)
    return -1;
  const auto* y = static_cast<const std::int64_t*>(labels->data());
  switch (out->dtype().toScalarType()) {
    case c10::ScalarType::Float:
      return right_of(static_cast<const float*>(out->data()), y, out->size(0), out->size(1));
    case c10::ScalarType::Double:
      return right_of(static_cast<const double*>(out->data()), y, out->size(0), out->size(1));
    default:
      return -1;
  }
}

// The Python side: each function takes its arguments as Python ints (addresses included) and
// returns an int. A METH_FASTCALL call costs a fraction of a ctypes call, whose argument
// conversion and libffi path, run once a step between forward and backward passes that evict
// the CPU's caches, took ~3.7 us.
bool int64_args(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t expected, const char* name,
                std::int64_t* out) {
  if (nargs != expected) {
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", name, expected, nargs);
    return false;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    out[i] = PyLong_AsLongLong(args[i]);
    if (out[i] == -1 && PyErr_Occurred()) return false;
  }
  return true;
}

PyObject* py_layout(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  std::int64_t a[4];
  if (!int64_args(args, nargs, 4, "layout", a)) return nullptr;
  return PyLong_FromLongLong(layout(a[0], reinterpret_cast<const std::int64_t*>(a[1]),
                                    reinterpret_cast<const std::int64_t*>(a[2]),
                                    reinterpret_cast<const std::int64_t*>(a[3])));
}

PyObject* py_all_finite(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  std::int64_t a[3];
  if (!int64_args(args, nargs, 3, "all_finite", a)) return nullptr;
  return PyLong_FromLongLong(all_finite(a[0], reinterpret_cast<const std::int64_t*>(a[1]), a[2]));
}

// fit()'s bookkeeping of one step in one call (Python: record(n, params, loss, out, labels,
// right, losses)): the guard of all_finite, then the loss's value appended to the list `losses`
// and, when `out` is given (not 0), the batch's correct predictions added to the int64 at
// address `right`. Returns 3 (finite, recorded, counted), 2 (finite, recorded, not counted: the
// caller counts), 0 (an infinity or a NaN: nothing recorded), -1 (cannot tell: nothing
// recorded, the caller checks and records another way).
PyObject* py_record(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  std::int64_t a[6];
  if (nargs != 7) {
    PyErr_Format(PyExc_TypeError, "record takes 7 arguments (%zd given)", nargs);
    return nullptr;
  }
  if (!int64_args(args, 6, 6, "record", a)) return nullptr;
  PyObject* losses = args[6];
  if (!PyList_Check(losses)) {
    PyErr_SetString(PyExc_TypeError, "record: losses must be a list");
    return nullptr;
  }
  const auto* loss = reinterpret_cast<const c10::TensorImpl*>(a[2]);
  std::int64_t answer = all_finite(a[0], reinterpret_cast<const std::int64_t*>(a[1]), a[2]);
  double value = 0;
  std::int64_t right = -1;
  if (answer == 1) {
    try {
      if (!scalar_value(loss, &value)) answer = -1;
      if (answer == 1 && a[3] != 0 && a[4] != 0 && a[5] != 0)
        right = count_right(reinterpret_cast<const c10::TensorImpl*>(a[3]),
                            reinterpret_cast<const c10::TensorImpl*>(a[4]));
    } catch (...) {
      answer = -1;
    }
  }
  if (answer != 1) return PyLong_FromLongLong(answer);
  PyObject* item = PyFloat_FromDouble(value);
  if (item == nullptr) return nullptr;
  const int failed = PyList_Append(losses, item);
  Py_DECREF(item);
  if (failed) return nullptr;
  if (right < 0) return PyLong_FromLongLong(2);
  *reinterpret_cast<std::int64_t*>(a[5]) += right;
  return PyLong_FromLongLong(3);
}

PyMethodDef methods[] = {
    {"layout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_layout)),
     METH_FASTCALL, "layout(n, params, ptrs, grads) -> 0 moved / 1 flat / 2 views"},
    {"all_finite", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_all_finite)),
     METH_FASTCALL, "all_finite(n, params, loss) -> 1 finite / 0 not / -1 cannot tell"},
    {"record", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_record)),
     METH_FASTCALL,
     "record(n, params, loss, out, labels, right, losses) -> 3 counted / 2 recorded / 0 "
     "not finite / -1 cannot tell"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradwise_native", nullptr, -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit_gradwise_native() { return PyModule_Create(&module); }
