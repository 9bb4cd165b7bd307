"""Loading the tokenizer: from the model folder (``model.tokenizer: null``), another local
folder, or a hub id; or none at all (``skip_tokenizer_init: true``: prompts are token ids,
outputs are ids with empty text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Any one of these makes a folder loadable by AutoTokenizer (fast JSON, sentencepiece,
# byte-level BPE vocab + merges, or WordPiece vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")

HOW_TO_FIX = (
    "set model.tokenizer=<folder or hub id> to load it from elsewhere, or "
    "skip_tokenizer_init=true to serve token ids only (prompts as prompt_token_ids)"
)


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(
    model_folder: Path, source: str | None = None, cache_dir: str | Path | None = None
) -> Any:
    """The HF tokenizer (remote code off) from ``source`` (``model.tokenizer``: a local folder
    or a hub id, downloaded under ``<cache_dir>/hub`` as model weights are), or from
    ``model_folder`` when ``source`` is None.

    Raises FileNotFoundError / RuntimeError naming ``model.tokenizer`` and
    ``skip_tokenizer_init`` when there is none to load.
    """
    from transformers import AutoTokenizer

    if source is None:
        if not has_tokenizer_files(model_folder):
            raise FileNotFoundError(
                f"model folder {model_folder} has no tokenizer files (any of "
                f"{', '.join(TOKENIZER_FILES)}); {HOW_TO_FIX}"
            )
        where, what = str(model_folder), f"the model folder {model_folder}"
    else:
        p = Path(source).expanduser()
        looks_local = p.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1
        if looks_local and not (p.is_dir() and has_tokenizer_files(p)):
            raise FileNotFoundError(
                f"model.tokenizer={source!r}: not a folder with tokenizer files (any of "
                f"{', '.join(TOKENIZER_FILES)}) nor a hub id 'org/name'; {HOW_TO_FIX}"
            )
        where, what = (str(p) if looks_local else source), f"model.tokenizer={source!r}"
    from infer.models.sources import default_cache_dir

    hub = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "hub"
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=False, cache_dir=str(hub))
    except Exception as e:  # corrupt files, hub unreachable or offline, unknown class ...
        raise RuntimeError(
            f"could not load a tokenizer from {what} ({type(e).__name__}: {e}); {HOW_TO_FIX}"
        ) from e
