"""Where does fused=True on CUDA fail? (device diagnosis; run each stage in its own process)

python scripts/gpu_kernel_probe.py build|public|direct
"""

import faulthandler
import sys

import torch

faulthandler.enable()
import gradwise.optim as go  # noqa: E402
from gradwise.optim import kernels  # noqa: E402

stage = sys.argv[1]
if stage == "public":  # load with torch._inductor.aoti_load_package

    def public(path, names):
        loaded = torch._inductor.aoti_load_package(str(path))
        return lambda p, g, st, sc: loaded(p, g, *(st[n] for n in names), *sc)

    kernels._load = public
p = torch.nn.Parameter(torch.randn(1000, device="cuda"))
o = go.Adam([p], lr=0.01, fused=True)
for _ in range(3):
    p.grad = torch.randn_like(p)
    print(stage, "step", flush=True)
    o.step()
torch.cuda.synchronize()
print(stage, "done; kernels available:", kernels.available(), kernels._error, flush=True)
