"""The harness's Hydra configs compose: launchers (basic, submitit SLURM/local), the pareto
experiment with its callback, every task and workload option."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, get_method

from infer import compose_config
from infer.config_loader import config_dir, group_options


def _compose_with_hydra(overrides: list[str]):  # type: ignore[no-untyped-def]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes() -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="pip install hydra-submitit-launcher (a pyproject dependency)",
    )
    cfg = _compose_with_hydra(["hydra/launcher=slurm", "experiment=pareto", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min > 0 and launcher.gpus_per_node == 1
    get_class(launcher._target_)  # the plugin class imports
    cfg = _compose_with_hydra(["hydra/launcher=local"])
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_default_launcher_is_basic() -> None:
    cfg = _compose_with_hydra(["experiment=pareto"])
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    cb = cfg.hydra.callbacks.pareto
    assert get_class(cb._target_).__name__ == "ParetoCallback"
    assert cfg.task.name == "point" and cfg.logger.sink.results == "auto"
    assert "bench" in cfg and "window" in cfg.eval


@pytest.mark.parametrize("task", group_options("task"))
def test_tasks_resolve(task: str) -> None:
    cfg = compose_config([f"task={task}"])
    get_method(cfg.task.fn)
    if task in ("bench", "point"):
        assert cfg.bench.baseline in ("none", "hf")


@pytest.mark.parametrize("workload", group_options("workload"))
def test_workloads_have_generators(workload: str) -> None:
    cfg = compose_config([f"workload={workload}"])
    get_method(cfg.workload.generator._target_)
    assert cfg.workload.generator._partial_ is True
