// The engine's native helpers (see gradwise/optim/native.py): per-step loops over a segment's
// tensors that cost more in Python than the work they guard. Only PyTorch's public extension
// API is used: THPVariable_Check/THPVariable_Unpack for the Python tensors, at::Tensor's
// accessors for what they hold.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <cstring>

namespace {

// The tensor a Python object holds, or nullptr (with a TypeError set) when it holds none.
const at::Tensor* tensor_of(PyObject* obj, const char* what) {
  if (!THPVariable_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s must be a tensor, not %s", what, Py_TYPE(obj)->tp_name);
    return nullptr;
  }
  return &THPVariable_Unpack(obj);
}

// A list of n tensors, or false (with a TypeError set).
bool tensor_list(PyObject* obj, Py_ssize_t n, const char* what) {
  if (!PyList_Check(obj) || (n >= 0 && PyList_GET_SIZE(obj) != n)) {
    PyErr_Format(PyExc_TypeError, "%s must be a list of %zd tensors", what, n);
    return false;
  }
  return true;
}

// A contiguous 1-D int64 CPU tensor of n values, as a pointer to them in `values` (false: a
// TypeError is set).
bool int64_values(PyObject* obj, std::int64_t n, const char* what, std::int64_t** values) {
  const at::Tensor* t = tensor_of(obj, what);
  if (t == nullptr) return false;
  if (t->scalar_type() != at::kLong || t->dim() != 1 || t->numel() != n || !t->is_cpu() ||
      !t->is_contiguous()) {
    PyErr_Format(PyExc_TypeError, "%s must be a contiguous int64 CPU tensor of %lld values", what,
                 static_cast<long long>(n));
    return false;
  }
  *values = t->data_ptr<std::int64_t>();
  return true;
}

// The gradient of parameter p when a helper may read it as plain memory (defined, dense, of no
// tensor subclass, contiguous, on the CPU, of dtype and of p's size), else nullptr.
const at::Tensor* plain_grad(const at::Tensor& p, at::ScalarType dtype) {
  const at::Tensor& g = p.grad();
  if (!g.defined() || g.unsafeGetTensorImpl()->is_python_dispatch() || !g.has_storage() ||
      g.layout() != at::kStrided || !g.is_cpu() || g.scalar_type() != dtype ||
      !g.is_contiguous() || g.numel() != p.numel() || g.is_conj() || g.is_neg())
    return nullptr;
  return &g;
}

// layout(params, ptrs, views) -> 0 / 1 / 2. params[i]: a parameter; ptrs[i]: where its data
// must start; views[i]: its view into the flat gradient buffer, or None. 0 if a parameter no
// longer lives at its place in the flat buffer (moved: model.to(...), p.data = ...), else 1 if
// some p.grad is not its view (None, or replaced), else 2.
PyObject* py_layout(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_Format(PyExc_TypeError, "layout takes 3 arguments (%zd given)", nargs);
    return nullptr;
  }
  if (!tensor_list(args[0], -1, "params")) return nullptr;
  const Py_ssize_t n = PyList_GET_SIZE(args[0]);
  if (!tensor_list(args[2], n, "views")) return nullptr;
  std::int64_t* ptrs = nullptr;
  if (!int64_values(args[1], n, "ptrs", &ptrs)) return nullptr;
  try {
    for (Py_ssize_t i = 0; i < n; ++i) {
      const at::Tensor* p = tensor_of(PyList_GET_ITEM(args[0], i), "params[i]");
      if (p == nullptr) return nullptr;
      if (reinterpret_cast<std::int64_t>(p->const_data_ptr()) != ptrs[i]) return PyLong_FromLong(0);
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* view = PyList_GET_ITEM(args[2], i);
      if (view == Py_None) return PyLong_FromLong(1);
      const at::Tensor* v = tensor_of(view, "views[i]");
      if (v == nullptr) return nullptr;
      const at::Tensor& g = THPVariable_Unpack(PyList_GET_ITEM(args[0], i)).grad();
      if (!g.defined() || !g.is_same(*v)) return PyLong_FromLong(1);
    }
  } catch (const std::exception&) {  // "moved": the caller lays out again
    return PyLong_FromLong(0);
  }
  return PyLong_FromLong(2);
}

// gather(params, offsets, buffer) -> bool. Copies each params[i].grad to buffer[offsets[i]:]
// (one memcpy each), when every gradient is defined, dense, contiguous, of the buffer's dtype,
// on the CPU and of its parameter's size; else copies nothing and returns False (the caller
// gathers another way). The caller's offsets keep every copy inside the buffer.
PyObject* py_gather(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_Format(PyExc_TypeError, "gather takes 3 arguments (%zd given)", nargs);
    return nullptr;
  }
  if (!tensor_list(args[0], -1, "params")) return nullptr;
  const Py_ssize_t n = PyList_GET_SIZE(args[0]);
  std::int64_t* offsets = nullptr;
  if (!int64_values(args[1], n, "offsets", &offsets)) return nullptr;
  const at::Tensor* buffer = tensor_of(args[2], "buffer");
  if (buffer == nullptr) return nullptr;
  try {
    if (!buffer->is_cpu() || !buffer->is_contiguous() || buffer->layout() != at::kStrided)
      Py_RETURN_FALSE;
    const auto dtype = buffer->scalar_type();
    const std::int64_t size = buffer->numel();
    for (Py_ssize_t i = 0; i < n; ++i) {
      const at::Tensor* p = tensor_of(PyList_GET_ITEM(args[0], i), "params[i]");
      if (p == nullptr) return nullptr;
      if (plain_grad(*p, dtype) == nullptr || offsets[i] < 0 || offsets[i] + p->numel() > size)
        Py_RETURN_FALSE;
    }
    char* base = static_cast<char*>(buffer->data_ptr());
    const std::int64_t item = buffer->element_size();
    for (Py_ssize_t i = 0; i < n; ++i) {
      const at::Tensor& g = THPVariable_Unpack(PyList_GET_ITEM(args[0], i)).grad();
      if (g.numel() > 0) std::memcpy(base + offsets[i] * item, g.const_data_ptr(), g.nbytes());
    }
  } catch (const std::exception&) {  // the caller gathers another way
    Py_RETURN_FALSE;
  }
  Py_RETURN_TRUE;
}

// pointers(params, like, out) -> bool. Writes where each params[i].grad's data starts to out[i],
// when every gradient is defined, dense, contiguous, of like's dtype, on the CPU and of its
// parameter's size; else writes nothing and returns False (the caller gathers them). A generated
// kernel then reads each gradient where backward left it (see gradwise/optim/generated.py); it
// runs at once, holding the GIL, while every p.grad keeps its tensor alive.
PyObject* py_pointers(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_Format(PyExc_TypeError, "pointers takes 3 arguments (%zd given)", nargs);
    return nullptr;
  }
  if (!tensor_list(args[0], -1, "params")) return nullptr;
  const Py_ssize_t n = PyList_GET_SIZE(args[0]);
  const at::Tensor* like = tensor_of(args[1], "like");
  if (like == nullptr) return nullptr;
  std::int64_t* out = nullptr;
  if (!int64_values(args[2], n, "out", &out)) return nullptr;
  try {
    if (!like->is_cpu()) Py_RETURN_FALSE;
    const auto dtype = like->scalar_type();
    for (Py_ssize_t i = 0; i < n; ++i) {
      const at::Tensor* p = tensor_of(PyList_GET_ITEM(args[0], i), "params[i]");
      if (p == nullptr) return nullptr;
      if (plain_grad(*p, dtype) == nullptr) Py_RETURN_FALSE;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
      const at::Tensor& g = THPVariable_Unpack(PyList_GET_ITEM(args[0], i)).grad();
      out[i] = reinterpret_cast<std::int64_t>(g.const_data_ptr());
    }
  } catch (const std::exception&) {  // the caller gathers them
    Py_RETURN_FALSE;
  }
  Py_RETURN_TRUE;
}

PyMethodDef methods[] = {
    {"layout", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_layout)),
     METH_FASTCALL, "layout(params, ptrs, views) -> 0 moved / 1 flat / 2 views"},
    {"gather", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_gather)),
     METH_FASTCALL, "gather(params, offsets, buffer) -> whether every .grad was copied"},
    {"pointers", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_pointers)),
     METH_FASTCALL, "pointers(params, like, out) -> whether every .grad's address was written"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradwise_optim_native", nullptr, -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit_gradwise_optim_native() { return PyModule_Create(&module); }
