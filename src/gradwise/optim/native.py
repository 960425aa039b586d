"""Native helpers for the engine's per-step loops over many tensors, compiled once per machine.

* **The layout check** (``layout``). Every step, the flat path must know that each parameter
  still lives in its segment's flat buffer (``model.to(...)`` or ``p.data = ...`` move it) and
  whether each ``p.grad`` is still its view into the flat gradient buffer
  (``zero_grad(set_to_none=True)`` or ``p.grad = ...`` replace it). In Python that is a
  ``data_ptr()`` call and a ``.grad`` lookup per parameter, ~150 ns each: 0.3 ms a step for 2000
  tensors, more than the fused update of their million elements.
* **The gather** (``gather``). With the default ``zero_grad()``, backward leaves every small
  tensor's gradient in a tensor of its own, and the step copies them into the segment's gradient
  buffer. ``torch._foreach_copy_`` costs ~1.5-2 µs a tensor (2.4 ms for 1,200 small gradients);
  one ``memcpy`` each costs 0.4 ms for the same.
* **The gradients' addresses** (``pointers``). A generated CPU kernel needs no gather at all: it
  reads each small tensor's gradient where backward left it, through a table of their addresses
  that this helper writes after checking every gradient (defined, dense, contiguous, on the CPU,
  of the parameter's dtype and size). The kernel runs at once, holding the GIL, while each
  ``p.grad`` keeps its tensor alive. 2000 × 512 Adam: 0.85 ms a step, against 1.89 ms gathered.

All three are in ``native.cpp``, written against PyTorch's public extension API only
(``THPVariable_Unpack`` and ``at::Tensor``'s accessors). :class:`Extension` builds such a file
with the C++ compiler (``$CXX``, else ``c++``) against this torch and Python, once per machine
(~20 s of one core), in a child process at the lowest CPU priority while the Python versions
serve; the child also imports the module it built, so a module that would not load never
reaches the user's process. It is cached beside the fused kernels. Where it cannot be built (no
compiler, no Python headers), one warning says so and the Python versions keep serving: same
answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from gradwise.optim import kernels

#: below this many tensors the Python versions cost about as much as the call into C++
MIN_PARAMS = 32


class Extension:
    """A C++ extension module of gradwise's (``source``, whose ``PyInit_<name>`` it defines),
    built once per machine in a child process; :meth:`get` is the module once it is there."""

    #: seconds between two looks at a build in progress
    POLL_S = 0.25

    def __init__(self, name: str, source: Path) -> None:
        self.name, self.source = name, source
        self.module: ModuleType | None = None
        self.error: str | None = None  # why it could not be built here, once that is known
        self._build: tuple[subprocess.Popen, object] | None = None
        self._next_look = 0.0

    def path(self) -> Path:
        source = self.source.read_bytes()
        abi = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)
        python = sysconfig.get_config_var("EXT_SUFFIX") or sys.version  # its C API
        key = hashlib.sha256(
            b"\x00".join([source, torch.__version__.encode(), str(abi).encode(), python.encode()])
        ).hexdigest()[:32]
        return kernels.cache_dir() / f"native-{self.name}-{key}.so"

    def get(self, wait: bool = False) -> ModuleType | None:
        """The module, or None: not built yet (a build is started or looked at; ``wait``
        waits for it) or not buildable here (:attr:`error` says why)."""
        if self.module is not None or self.error is not None:
            return self.module
        if self._build is not None:
            if not wait and time.monotonic() < self._next_look:
                return None
            return self._finish(wait)
        try:
            if not sys.platform.startswith(("linux", "darwin")):
                raise RuntimeError(f"not built on {sys.platform}")
            path = self.path()
            if path.exists():
                return self._load(path)
            errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _finish
            command = [
                sys.executable,
                "-c",
                "import sys; from gradwise.optim import native; native.child_build(*sys.argv[1:])",
                self.name,
                str(self.source),
                str(path),
            ]
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                preexec_fn=kernels.lowest_priority,
            )
        except Exception as e:  # noqa: BLE001 - any failure: the Python versions serve
            self._fail(f"{type(e).__name__}: {e}")
            return None
        self._build = (proc, errors)
        self._next_look = time.monotonic() + self.POLL_S
        return self._finish(wait) if wait else None

    def _finish(self, wait: bool) -> ModuleType | None:
        proc, errors = self._build
        if wait:
            proc.wait()
        elif proc.poll() is None:
            self._next_look = time.monotonic() + self.POLL_S
            return None
        self._build = None
        errors.seek(0)
        lines = errors.read().decode(errors="replace").strip().splitlines()
        errors.close()
        if proc.returncode != 0:
            self._fail(lines[-1] if lines else f"the build exited with {proc.returncode}")
            return None
        return self._load(self.path())

    def _load(self, path: Path) -> ModuleType | None:
        try:
            with contextlib.suppress(OSError):  # "last used", for `gradwise cache --older-than`
                os.utime(path)
            self.module = import_extension(self.name, path)
        except Exception as e:  # noqa: BLE001 - the Python versions serve
            self._fail(f"{type(e).__name__}: {e}")
        return self.module

    def _fail(self, error: str) -> None:
        self.error = error
        warnings.warn(
            f"gradwise: the native helpers ({self.name}) could not be built here ({error}); "
            "their Python versions run instead (same results, slower). They need a C++ "
            "compiler ($CXX or c++) and Python's headers.",
            RuntimeWarning,
            stacklevel=4,
        )


def import_extension(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(f"gradwise_{name}_native", str(path))
    spec = importlib.util.spec_from_file_location(loader.name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def compile_extension(source: Path, out: Path) -> None:
    """Compile ``source`` into the extension module ``out`` against this torch and Python."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    command = [
        compiler,
        "-O3",
        "-std=c++20",
        "-shared",
        "-fPIC",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{sysconfig.get_paths()['include']}",
        *(f"-I{p}" for p in cpp_extension.include_paths()),
        *(["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []),
        str(source),
        "-o",
        str(out),
        f"-L{torch_lib}",
        "-lc10",
        "-ltorch",
        "-ltorch_cpu",
        "-ltorch_python",
        f"-Wl,-rpath,{torch_lib}",
    ]
    done = subprocess.run(command, capture_output=True, timeout=600)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines or ["?"]
        raise RuntimeError(f"{Path(compiler).name} failed: {errors[0]}")


def child_build(name: str, source: str, path: str) -> None:
    """In the child process: compile, import the result (a module that would not load fails
    here, not in the user's process), then rename it into the cache."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp.so")
    try:
        compile_extension(Path(source), tmp)
        import_extension(name, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


#: the engine's helpers: ``layout`` and ``gather`` (see ``native.cpp``)
ENGINE = Extension("optim", Path(__file__).with_name("native.cpp"))


def helpers(wait: bool = False) -> ModuleType | None:
    """The engine's compiled helpers, or None while they are not (yet) built here."""
    return ENGINE.get(wait)
