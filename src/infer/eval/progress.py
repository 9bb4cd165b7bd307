"""tqdm progress bars for long evals and benches (shown on a terminal, silent in logs)."""

from __future__ import annotations

import os
from typing import Any


def progress(total: int | None = None, desc: str = "", unit: str = "it", iterable: Any = None) -> Any:
    """A tqdm bar on stderr; disabled when stderr is not a terminal unless INFER_PROGRESS=1,
    or always when INFER_PROGRESS=0."""
    from tqdm.auto import tqdm

    env = os.environ.get("INFER_PROGRESS")
    disable = None if env is None else env == "0"
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, disable=disable)
