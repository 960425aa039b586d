"""Time ``optimizer.step()``: PyTorch's for-loop, foreach and fused paths against gradwise.

    python benchmarks/optim_step.py --quick --threads 1
    python benchmarks/optim_step.py --json results.json

A thin wrapper: the harness lives in :mod:`gradwise.lab.bench` (``--help`` lists the options).
"""

import sys

from gradwise.lab.bench import main

if __name__ == "__main__":
    sys.exit(main())
