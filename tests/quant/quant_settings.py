"""Calibration settings shared by the quantization tests (a module of its own: several test
folders have a conftest.py, so ``from conftest import ...`` would depend on import order)."""

from __future__ import annotations

from pathlib import Path

# calibration small enough for a tiny model on a 2-core CPU
CALIB = ["quant.method.calib.num_seqs=4", "quant.method.calib.seq_len=64"]


def calib_overrides(quant: str, cache_dir: Path) -> list[str]:
    """Overrides for LLM(..., overrides=...) that keep calibration fast and its cache private."""
    if quant in ("w8a8", "awq", "fp8", "gptq"):
        return [*CALIB, f"quant.method.cache_dir={cache_dir}"]
    return []
