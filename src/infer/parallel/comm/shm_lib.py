"""Loader for the shared-memory collective primitives (csrc/shm_comm.c), through ctypes.

The C file includes no torch or Python headers, so it compiles in well under a second with the
system C compiler and its ABI does not depend on the torch version. The shared object is cached
under $INFER_CACHE_DIR/shm_comm, keyed by a hash of the source, the flags and the CPU's flags
(it is built with -march=native). ``load()`` returns None when no compiler is available; then
``ShmComm`` cannot be created and ``make_comm("auto")`` uses gloo.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from infer.cpp_ext import cpu_tag
from infer.models.sources import default_cache_dir

_SRC = Path(__file__).parent / "csrc" / "shm_comm.c"
# -O3 vectorizes the reduction loops; never -ffast-math (it would let the compiler reassociate
# the rank-ordered sums and break bit-identical results across ranks)
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC"]


class ShmLibError(RuntimeError):
    """The C primitives could not be built or loaded."""


def _key() -> str:
    h = hashlib.sha1(_SRC.read_bytes() + " ".join(_FLAGS).encode() + cpu_tag().encode())
    return h.hexdigest()[:16]


def _build(target: Path) -> None:
    """Compile into a temp file beside ``target`` and rename it into place (atomic, so ranks
    or test processes building at once never load a half-written file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cc = os.environ.get("CC", "cc")
    try:
        res = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SRC)], capture_output=True, text=True,
                             check=False)
        if res.returncode != 0:
            raise ShmLibError(f"{cc} failed to build {_SRC.name}: {res.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except FileNotFoundError as e:
        raise ShmLibError(f"no C compiler ({cc}) to build {_SRC.name}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@lru_cache(maxsize=1)
def load_or_raise() -> ctypes.CDLL:
    """Build (first time) and load the library; raises ShmLibError if impossible.

    ctypes.CDLL releases the GIL during each call, so a rank waiting for its peers does not
    block other Python threads of its process."""
    target = default_cache_dir() / "shm_comm" / f"shm_comm-{_key()}.so"
    if not target.exists():
        _build(target)
    lib = ctypes.CDLL(str(target))
    u64, i64, i32, ptr, dbl = (ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_double)
    lib.shm_sync.argtypes = [ptr, i32, i32, u64, u64, u64, dbl]
    lib.shm_sync.restype = i32
    lib.shm_allreduce_f32.argtypes = [ptr, ctypes.c_size_t, ctypes.c_size_t, i32, i32, u64, ptr,
                                      i64, u64, u64, dbl, ctypes.POINTER(i64)]
    lib.shm_allreduce_f32.restype = i32
    return lib


def load() -> ctypes.CDLL | None:
    """The library, or None when it cannot be built here."""
    try:
        return load_or_raise()
    except (ShmLibError, OSError):
        return None
