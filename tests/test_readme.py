"""The README's Python blocks run as written: in order, as one session (a later block may use
what an earlier one made, as a reader trying them in one interpreter would)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

README = Path(__file__).resolve().parents[1] / "README.md"
#: each block's code, dedented (a block inside a list item is indented with it)
BLOCKS = [
    textwrap.dedent(code)
    for code in re.findall(r"^ *```python\n(.*?)^ *```", README.read_text("utf-8"), re.S | re.M)
]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


def test_every_python_block_of_the_readme_runs_in_order(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    session: dict = {"__name__": "readme"}
    for number, block in enumerate(BLOCKS, 1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), session)
        except Exception as e:
            raise AssertionError(f"README python block {number} fails:\n{block}") from e
