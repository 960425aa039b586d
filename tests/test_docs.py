"""The documentation site builds: ``mkdocs build --strict`` (mkdocs.yml) passes, and its API
reference, generated from the docstrings, documents every public name of every public module."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: API page (docs/api/<page>.md) -> the module whose ``__all__`` it documents.
PAGES = {
    "optim": "gradwise.optim",
    "schedules": "gradwise.schedules",
    "init": "gradwise.init",
    "regularization": "gradwise.regularization",
    "train": "gradwise.train",
    "lab": "gradwise.lab",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="no docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is missing")
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    return out


def test_the_site_builds_with_every_page(site):
    assert (site / "index.html").is_file()
    for page in [*PAGES, "gradwise"]:
        assert (site / "api" / page / "index.html").is_file(), page
    for guide in ("gallery", "reliability", "scaling", "benchmarking", "design", "spec"):
        assert (site / guide / "index.html").is_file(), guide


def test_the_api_reference_renders_the_docstrings(site):
    from gradwise.optim import Adam

    html = (site / "api" / "optim" / "index.html").read_text(encoding="utf-8")
    assert 'id="gradwise.optim.Adam"' in html
    first = inspect.getdoc(Adam).splitlines()[0].split("``")[0].strip()
    assert first and first in html, first  # e.g. "Adam, drop-in for"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_public_name_is_in_the_reference(site, page):
    module = importlib.import_module(PAGES[page])
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', html))
    missing = [
        name for name in module.__all__ if not any(i.rsplit(".", 1)[-1] == name for i in ids)
    ]
    assert not missing, (
        f"docs/api/{page}.md does not document {missing} of {PAGES[page]}.__all__: add a "
        f"'::: {PAGES[page]}.NAME' directive for each (or '::: {PAGES[page]}.SUBMODULE.NAME' "
        "where a submodule has the same name)"
    )


def test_gradwise_load_is_documented(site):
    html = (site / "api" / "gradwise" / "index.html").read_text(encoding="utf-8")
    assert 'id="gradwise.load"' in html
