"""Time whole training iterations — default ``zero_grad()``, forward, backward, ``step()`` — with
gradwise against torch.optim's fastest path, on four models and four optimizers.

    python benchmarks/train_step.py                       # 1 thread, 21 rounds: a few minutes
    python benchmarks/train_step.py --threads 2 --json train_step_t2.json
    python benchmarks/train_step.py --quick --models deep-narrow --optimizers adam

A thin wrapper: the harness lives in :mod:`gradwise.lab.train_step` (``--help`` lists options).
"""

import sys

from gradwise.lab.train_step import main

if __name__ == "__main__":
    sys.exit(main())
