// gradwise: the per-step check that a flat segment's parameters and gradients are still views
// into its flat buffers, as one C++ loop (see gradwise/optim/native.py).
//
// In Python this check costs ~150 ns per parameter (a data_ptr() call and a .grad lookup); on a
// model of 2000 tensors that is more than the fused update itself. Here it is a few ns each.
#include <c10/core/TensorImpl.h>

#include <cstdint>

namespace {
// An at::Tensor holds exactly one intrusive_ptr<TensorImpl>: its first word is the TensorImpl.
inline std::int64_t impl_of(const at::Tensor& t) {
  return reinterpret_cast<std::int64_t>(*reinterpret_cast<const c10::TensorImpl* const*>(&t));
}
}  // namespace

// params[i]: the TensorImpl of parameter i (Python: p._cdata; stable across p.data = ...),
// ptrs[i]: where its data must start, grads[i]: the TensorImpl of its flat gradient view.
// Returns 0 if a parameter no longer lives at its place in the flat buffer, 1 if the parameters
// do but a .grad is not its view (None, or replaced), 2 if both hold.
extern "C" std::int64_t gradwise_layout(std::int64_t n, const std::int64_t* params,
                                        const std::int64_t* ptrs, const std::int64_t* grads) {
  for (std::int64_t i = 0; i < n; ++i) {
    auto* p = reinterpret_cast<const c10::TensorImpl*>(params[i]);
    if (reinterpret_cast<std::int64_t>(p->data()) != ptrs[i]) return 0;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    auto* p = reinterpret_cast<const c10::TensorImpl*>(params[i]);
    if (impl_of(p->grad()) != grads[i]) return 1;
  }
  return 2;
}
