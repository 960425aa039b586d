// gradwise's native helpers, compiled once per machine and called through ctypes (see
// gradwise/optim/native.py). Each replaces a per-step Python loop over tensors whose cost, on a
// model of many small tensors, was more than the work itself.
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
bool any_nonfinite(const void* data, std::int64_t n, Bits exponent) {
  const auto* v = static_cast<const Bits*>(data);
  Bits bad = 0;
  for (std::int64_t i = 0; i < n; ++i) bad |= ((v[i] & exponent) == exponent);
  return bad != 0;
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
      return !any_nonfinite<std::uint32_t>(data, n, 0x7f800000u);
    case c10::ScalarType::Double:
      return !any_nonfinite<std::uint64_t>(data, n, 0x7ff0000000000000ull);
    case c10::ScalarType::Half:
      return !any_nonfinite<std::uint16_t>(data, n, 0x7c00u);
    case c10::ScalarType::BFloat16:
      return !any_nonfinite<std::uint16_t>(data, n, 0x7f80u);
    default:
      return -1;
  }
  return -1;
}
}  // namespace

// The flat path's layout check. params[i]: the TensorImpl of parameter i (Python: p._cdata;
// stable across p.data = ...), ptrs[i]: where its data must start, grads[i]: the TensorImpl of
// its flat gradient view. Returns 0 if a parameter no longer lives at its place in the flat
// buffer, 1 if the parameters do but a .grad is not its view (None, or replaced), 2 if both hold.
extern "C" std::int64_t gradwise_layout(std::int64_t n, const std::int64_t* params,
                                        const std::int64_t* ptrs, const std::int64_t* grads) try {
  for (std::int64_t i = 0; i < n; ++i) {
    auto* p = reinterpret_cast<const c10::TensorImpl*>(params[i]);
    if (reinterpret_cast<std::int64_t>(p->data()) != ptrs[i]) return 0;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    auto* p = reinterpret_cast<const c10::TensorImpl*>(params[i]);
    if (reinterpret_cast<std::int64_t>(impl_of(p->grad())) != grads[i]) return 1;
  }
  return 2;
} catch (...) {  // no exception may cross into ctypes: "moved", the caller lays out again
  return 0;
}

// The training loop's NaN/inf guard: the loss (a TensorImpl) and the .grad of each of n
// parameters (their TensorImpls; an undefined .grad is skipped). 1: all finite, 0: some value is
// an infinity or a NaN, -1: cannot tell here (the caller checks another way).
extern "C" std::int64_t gradwise_all_finite(std::int64_t n, const std::int64_t* params,
                                            std::int64_t loss) try {
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
} catch (...) {  // no exception may cross into ctypes: the caller checks another way
  return -1;
}
