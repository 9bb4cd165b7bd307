"""One loader for the project's small C++ CPU extensions (attention, dense and quantized
linear): compiled once with the system compiler through torch.utils.cpp_extension, cached
under $INFER_CACHE_DIR/torch_extensions.

The build folder's name carries a hash of the source text, of its absolute path and of the
CPU's flags and compile flags: an edited kernel never meets a stale build, a second checkout
of the repository (whose build.ninja would name other source paths) never triggers a rebuild
of another's, and a build made with -march=native on one CPU is not loaded on another.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

INCLUDE = Path(__file__).parent / "csrc"  # headers shared by the extensions (vec_math.h)


def cpu_tag() -> str:
    """Short hash of the CPU flags (the builds use -march=native)."""
    try:
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    except OSError:
        flags = ""
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def load_cpp_extension(prefix: str, source: Path, cflags: list[str], what: str) -> ModuleType | None:
    """Compile (first time) and import ``source`` as module ``<prefix>_<hash>``; None when
    INFER_DISABLE_CPU_KERNEL is set or the build fails (a warning names ``what`` falls back)."""
    if os.environ.get("INFER_DISABLE_CPU_KERNEL"):
        return None
    from torch.utils.cpp_extension import load as load_ext

    from infer.models.sources import default_cache_dir

    key = hashlib.sha256(source.read_bytes())
    for header in sorted(INCLUDE.glob("*.h")):  # shared headers: an edit rebuilds every user
        key.update(header.read_bytes())
    key.update(str(source.resolve()).encode())
    key.update(" ".join([*cflags, "-fopenmp"]).encode())
    name = f"{prefix}_{key.hexdigest()[:10]}_{cpu_tag()}"
    build = default_cache_dir() / "torch_extensions" / f"torch{torch.__version__}" / name
    build.mkdir(parents=True, exist_ok=True)
    try:
        # -fopenmp: at::parallel_for is a header template; compiled without OpenMP it runs
        # its body on the calling thread only (the kernels would ignore torch's thread count)
        return load_ext(name=name, sources=[str(source)], extra_cflags=[*cflags, "-fopenmp"],
                        extra_include_paths=[str(INCLUDE)],
                        extra_ldflags=["-fopenmp"], build_directory=str(build), verbose=False)
    except Exception as e:  # noqa: BLE001 (no compiler, unsupported platform ...)
        warnings.warn(f"{what} unavailable, using the torch path: {e}", stacklevel=3)
        return None
