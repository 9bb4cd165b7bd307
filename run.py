"""Hydra entry point: `python run.py attention=torch quant=none task=generate` (see README)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from infer.build import build
    from infer.parallel.launch import spmd_engine

    # under torchrun/SLURM every rank builds; rank 0 runs the task, the others replay its calls
    with spmd_engine(cfg, build) as engine:
        if engine is None:
            return  # a worker rank: nothing to print or write
        task = get_method(cfg.task.fn)
        metrics = task(engine, cfg)
    metrics.update({"model": cfg.model.name, "attention": cfg.attention.name,
                    "quant": cfg.quant.name, "spec": cfg.spec.name, "kernels": cfg.kernels.name,
                    "parallel": cfg.parallel.name})
    sink = instantiate(cfg.logger.sink)
    sink.log_summary(metrics, Path(HydraConfig.get().runtime.output_dir))
    sink.finish()


if __name__ == "__main__":
    from infer.parallel.launch import quiet_worker_overrides

    sys.argv += quiet_worker_overrides()  # ranks > 0 of torchrun: no run folder of their own
    main()
