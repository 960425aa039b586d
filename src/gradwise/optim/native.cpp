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

// 1: finite, 0: holds an infinity or a NaN, -1: cannot tell here (not a plain, dense,
// contiguous CPU float tensor). Subclasses with Python dispatch (DTensor, ...) are left alone
// before anything is asked of them that could call into Python.
int finite(const c10::TensorImpl* t) {
  if (t->is_python_dispatch() || t->layout() != c10::kStrided || !t->has_storage() ||
      t->device_type() != c10::DeviceType::CPU || !t->is_contiguous())
    return -1;
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

// The Python side: each function takes its arguments as Python ints (addresses included) and
// returns an int. A METH_FASTCALL call costs a fraction of a ctypes call, whose argument
// conversion and libffi path, run once a step between forward and backward passes that evict
// the CPU's caches, took ~3.5 us.
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

PyMethodDef methods[] = {
    {"layout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_layout)),
     METH_FASTCALL, "layout(n, params, ptrs, grads) -> 0 moved / 1 flat / 2 views"},
    {"all_finite", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_all_finite)),
     METH_FASTCALL, "all_finite(n, params, loss) -> 1 finite / 0 not / -1 cannot tell"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradwise_native", nullptr, -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit_gradwise_native() { return PyModule_Create(&module); }
