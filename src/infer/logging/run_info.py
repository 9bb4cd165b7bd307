"""What a sink needs to know about the current run: dirs, overrides, group choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """Hydra context of a run (empty fields outside Hydra, e.g. in a notebook)."""

    run_dir: Path
    sweep_dir: Path | None = None          # set in multirun (-m) jobs
    job_num: int | None = None             # index of the sweep point
    overrides: list[str] = field(default_factory=list)  # command line + sweep overrides
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option

    @property
    def label(self) -> str:
        """The point's overrides, e.g. 'model.dtype=bfloat16 engine.max_num_seqs=8'."""
        return " ".join(self.overrides) or self.run_dir.name


def run_info(run_dir: Path) -> RunInfo:
    """Read HydraConfig when a Hydra job is running; else only ``run_dir`` is known."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunInfo(run_dir)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not str(k).startswith("hydra")}
    return RunInfo(
        run_dir=run_dir,
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
        job_num=int(hc.job.num) if multirun else None,
        overrides=[str(o) for o in hc.overrides.task],
        choices=choices,
    )


def composed_config(run_dir: Path) -> dict[str, Any]:
    """The composed config Hydra saved as ``run_dir/.hydra/config.yaml`` ({} if absent)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    p = run_dir / ".hydra" / "config.yaml"
    if not p.exists():
        return {}
    cfg = OmegaConf.load(p)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException:  # e.g. ${hydra:...} outside the job: keep the interpolations as text
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
