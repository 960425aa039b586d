"""``python -m gradwise.lab.bench``: the step benchmark's command line."""

import sys

from gradwise.lab.bench.cli import main

sys.exit(main())
