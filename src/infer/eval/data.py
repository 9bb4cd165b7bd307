"""Texts for perplexity and workloads, loaded through ``datasets``.

A data spec is one of:
  - ``builtin:pydoc``: Python's own ``pydoc_data/topics.py`` (English technical prose that
    ships with every Python; offline default);
  - a local text file (``.txt``/``.md``/...; the whole file is one document);
  - a local folder: a dataset saved with ``Dataset.save_to_disk`` or any folder
    ``datasets.load_dataset`` understands (json/csv/parquet/text files);
  - a hub name (needs a network): ``wikitext-2-raw-v1`` (alias) or ``name`` / ``name:config``.

Every text is split once, by token position: evaluation (perplexity windows, greedy
prompts) reads only its first half (:func:`eval_part`), calibration (quant.*.calib) only its
second half (:func:`calibration_part`). The split does not depend on any other setting, so
calibration never sees a scored token whatever eval.max_windows, eval.window or the greedy
prompt settings, and every point of a sweep scores the same windows.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

# hub aliases: spec -> (path, config name)
HUB_ALIASES = {
    "wikitext-2-raw-v1": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "wikitext-103-raw-v1": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
}


def pydoc_text() -> str:
    """The prose of ``pydoc_data.topics``: every topic's text, in file order, blank-line separated."""
    from pydoc_data import topics

    return "\n\n".join(str(v).strip() for v in topics.topics.values())


def _builtin_file(name: str, cache_dir: Path) -> Path:
    if name != "pydoc":
        raise ValueError(f"unknown builtin text {name!r}; available: builtin:pydoc")
    path = cache_dir / "data" / "pydoc_topics.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(pydoc_text(), encoding="utf-8")
        tmp.replace(path)
    return path


def load_rows(spec: str, cache_dir: Path, split: str = "test", field: str = "text") -> list[str]:
    """The text rows of ``spec`` (see module docstring) via ``datasets``."""
    import datasets

    ds_cache = str(cache_dir / "datasets")
    if spec.startswith("builtin:"):
        spec = str(_builtin_file(spec.removeprefix("builtin:"), cache_dir))
    p = Path(spec).expanduser()
    if p.is_file():
        ds: Any = datasets.load_dataset(
            "text", data_files=str(p), sample_by="document", split="train", cache_dir=ds_cache
        )
        field = "text"
    elif p.is_dir():
        if any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(str(p), cache_dir=ds_cache)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split] if split in ds else ds[next(iter(ds))]
    elif spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"eval/workload data {spec!r} does not exist")
    else:
        path, name = HUB_ALIASES.get(spec, (spec.split(":")[0], (spec.split(":") + [None])[1]))
        try:
            ds = datasets.load_dataset(path, name, split=split, cache_dir=ds_cache)
        except Exception as e:  # offline, unknown name, ...
            raise RuntimeError(
                f"could not load dataset {spec!r} ({type(e).__name__}: {e}); offline, use "
                "builtin:pydoc, a local text file or a local dataset folder"
            ) from e
    if field not in ds.column_names:
        raise ValueError(f"dataset {spec!r} has no column {field!r}; columns: {ds.column_names}")
    return [str(t) for t in ds[field]]


@functools.lru_cache(maxsize=4)
def _load_text(spec: str, cache_dir: str, split: str, field: str, joiner: str) -> str:
    rows = load_rows(spec, Path(cache_dir), split, field)
    return joiner.join(rows)


def load_text(
    spec: str, cache_dir: Path, split: str = "test", field: str = "text", joiner: str = "\n\n"
) -> str:
    """All rows of ``spec`` joined into one string (memoized per process)."""
    return _load_text(spec, str(cache_dir), split, field, joiner)


def split_point(num_tokens: int) -> int:
    """Index of a text's first calibration token (its middle)."""
    return num_tokens // 2


def eval_part(ids: list[int]) -> list[int]:
    """The tokens evaluation may read: the first half of the text."""
    return ids[: split_point(len(ids))]


def calibration_part(ids: list[int]) -> list[int]:
    """The tokens calibration may read: the second half of the text."""
    return ids[split_point(len(ids)) :]


def corpus_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def windows(ids: list[int], window: int, max_windows: int | None) -> list[list[int]]:
    """Non-overlapping windows of exactly ``window`` tokens from the start of ``ids``
    (a short tail is dropped), at most ``max_windows`` of them (None = all)."""
    if window < 2:
        raise ValueError(f"eval.window must be >= 2 tokens, got {window}")
    n = len(ids) // window
    if max_windows is not None:
        n = min(n, int(max_windows))
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {window}")
    return [ids[i * window : (i + 1) * window] for i in range(n)]
