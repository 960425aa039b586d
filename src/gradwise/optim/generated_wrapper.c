// The Python entry point of a generated kernel (see gradwise/optim/generated.py), appended to
// the generated loop, which defines T, K, SCALARS, TABLE, piece() and run_table().
//
// run(pieces, scalars, threads, table=None): pieces a list of K-tuples of writable C-contiguous
// buffers of one length and of T's item size, scalars a buffer of SCALARS doubles. With a table
// (ptrs, offsets, lengths: buffers of one count of int64), the first piece's gradient is None:
// tensor t's gradient starts at address ptrs[t] and is read for lengths[t] elements, where the
// piece's other buffers are at offsets[t]. Every buffer and every table entry is checked before
// any memory is written: a refused call changes nothing.
static int take(PyObject* obj, Py_buffer* view, Py_ssize_t len) {
  if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
    return -1;
  if (view->itemsize != (Py_ssize_t)sizeof(T) || (len >= 0 && view->len != len)) {
    PyErr_Format(PyExc_ValueError, "a buffer of %zd bytes of %zd-byte items, expected %zd bytes "
                 "of %zd-byte items", view->len, view->itemsize, len, (Py_ssize_t)sizeof(T));
    PyBuffer_Release(view);
    return -1;
  }
  return 0;
}

// The table's three buffers into t (released by the caller); 0, or -1 with an error set.
static int take_table(PyObject* table, Py_buffer* t, Py_ssize_t piece_len) {
  if (!TABLE) {
    PyErr_SetString(PyExc_ValueError, "this kernel writes the gradient: it takes no table");
    return -1;
  }
  if (!PyTuple_Check(table) || PyTuple_GET_SIZE(table) != 3) {
    PyErr_SetString(PyExc_TypeError, "table must be a tuple (ptrs, offsets, lengths)");
    return -1;
  }
  for (int i = 0; i < 3; i++) {
    PyObject* item = PyTuple_GET_ITEM(table, i);
    if (PyObject_GetBuffer(item, &t[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (t[i].itemsize != 8 || t[i].len != t[0].len) {
      PyErr_SetString(PyExc_ValueError, "table: three buffers of one count of 8-byte items");
      return -1;
    }
  }
  const int64_t* gp = (const int64_t*)t[0].buf;
  const int64_t* off = (const int64_t*)t[1].buf;
  const int64_t* len = (const int64_t*)t[2].buf;
  const int64_t n = piece_len / (Py_ssize_t)sizeof(T);
  for (Py_ssize_t i = 0; i < t[0].len / 8; i++) {
    if (off[i] < 0 || len[i] < 0 || off[i] > n - len[i] || (len[i] > 0 && gp[i] == 0)) {
      PyErr_Format(PyExc_ValueError, "table entry %zd: %lld elements at %lld, outside the piece's "
                   "%lld", i, (long long)len[i], (long long)off[i], (long long)n);
      return -1;
    }
  }
  return 0;
}

static PyObject* run(PyObject* self, PyObject* args) {
  PyObject* pieces;
  PyObject* table = Py_None;
  Py_buffer scalars;
  Py_buffer tab[3] = {0};
  int threads;
  if (!PyArg_ParseTuple(args, "O!y*i|O", &PyList_Type, &pieces, &scalars, &threads, &table))
    return NULL;
  const int has_table = table != Py_None;
  if (scalars.len != (Py_ssize_t)(SCALARS * sizeof(double))) {
    PyBuffer_Release(&scalars);
    return PyErr_Format(PyExc_ValueError, "scalars: %zd bytes, expected %zd", scalars.len,
                        (Py_ssize_t)(SCALARS * sizeof(double)));
  }
  Py_ssize_t n = PyList_GET_SIZE(pieces);
  Py_buffer* views = PyMem_Calloc(n * K + 1, sizeof(Py_buffer));
  if (views == NULL) {
    PyBuffer_Release(&scalars);
    return PyErr_NoMemory();
  }
  int ok = 1;
  if (has_table && n < 1) {
    PyErr_SetString(PyExc_ValueError, "a table needs a piece");
    ok = 0;
  }
  for (Py_ssize_t p = 0; ok && p < n; p++) {
    PyObject* piece_ = PyList_GET_ITEM(pieces, p);
    if (!PyTuple_Check(piece_) || PyTuple_GET_SIZE(piece_) != K) {
      PyErr_Format(PyExc_TypeError, "piece %zd must be a tuple of %d buffers", p, K);
      ok = 0;
      break;
    }
    for (int i = 0; ok && i < K; i++) {
      Py_ssize_t len = i == 0 ? -1 : views[p * K].len;
      if (p == 0 && i == 1 && has_table) {
        if (PyTuple_GET_ITEM(piece_, i) != Py_None) {
          PyErr_SetString(PyExc_ValueError, "with a table, the first piece's gradient is None");
          ok = 0;
        }
        continue;
      }
      if (take(PyTuple_GET_ITEM(piece_, i), &views[p * K + i], len) < 0) ok = 0;
    }
  }
  if (ok && has_table && take_table(table, tab, views[0].len) < 0) ok = 0;
  if (ok) {
    const double* s = (const double*)scalars.buf;
    const int t = threads < 1 ? 1 : threads;
    // with a table, the GIL stays held: each gradient read is kept alive by its p.grad, which
    // no other Python thread can replace meanwhile
    PyThreadState* saved = has_table ? NULL : PyEval_SaveThread();
    for (Py_ssize_t p = 0; p < n; p++) {
      T* b[K];
      for (int i = 0; i < K; i++) b[i] = (T*)views[p * K + i].buf;
      const int64_t len = views[p * K].len / (Py_ssize_t)sizeof(T);
#if TABLE
      if (p == 0 && has_table) {
        run_table(tab[0].len / 8, len, (const int64_t*)tab[0].buf, (const int64_t*)tab[1].buf,
              (const int64_t*)tab[2].buf, b, s, t);
        continue;
      }
#endif
      piece(len, b, s, t);
    }
    if (saved != NULL) PyEval_RestoreThread(saved);
  }
  for (int i = 0; i < 3; i++)
    if (tab[i].obj != NULL) PyBuffer_Release(&tab[i]);
  for (Py_ssize_t i = 0; i < n * K; i++)
    if (views[i].obj != NULL) PyBuffer_Release(&views[i]);
  PyMem_Free(views);
  PyBuffer_Release(&scalars);
  if (!ok) return NULL;
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS, "run(pieces, scalars, threads, table=None)"},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradwise_kernel", NULL, -1, methods};
PyMODINIT_FUNC PyInit_gradwise_kernel(void) {
  PyObject* m = PyModule_Create(&module);
  if (m != NULL && PyModule_AddIntConstant(m, "TABLE", TABLE) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
