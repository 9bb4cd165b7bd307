"""Several ``spec`` options over ONE built target engine, for side-by-side benchmarks.

Building an engine per proposer would load the target again each time and compare runs on
different weight copies; here the target (model, KV, scheduler) is built once and only the
proposer and its policy are swapped between runs, exactly as ``build`` would have wired them.
Swap only while the engine is idle (no unfinished request): proposers keep per-sequence state.
"""

from __future__ import annotations

from typing import Any

from infer.config_loader import compose_config
from infer.parallel.state import require_one_process
from infer.spec.factory import TargetContext, build_spec
from infer.utils import parse_dtype


def target_context(engine: Any) -> TargetContext:
    """What a model-based proposer needs from an engine made by ``infer.build``."""
    cfg = engine.config
    runner = engine.runner
    return TargetContext(
        model=runner.model,
        folder=engine.model_path,
        dtype=parse_dtype(cfg.model.dtype),
        device=runner.device,
        ops=runner.model.ops,
        max_model_len=engine.max_model_len,
        vocab_size=engine.vocab_size,
        kv=runner.kv,
        attention=cfg.attention,
        sampler=engine.sampler,
        cache_dir=cfg.get("cache_dir"),
    )


def build_variant(engine: Any, option: str, overrides: list[str] | None = None) -> tuple[Any, Any]:
    """(proposer, policy) of ``spec=<option>`` with ``spec.*`` Hydra ``overrides`` (e.g.
    ``["spec.mode=quant"]``), built against ``engine``'s target."""
    bad = [o for o in overrides or [] if not o.lstrip("+~").startswith("spec.")]
    if bad:
        raise ValueError(f"build_variant: only spec.* overrides are allowed, got {bad}")
    spec_cfg = compose_config([f"spec={option}", *(overrides or [])]).spec
    return build_spec(spec_cfg, target_context(engine))


def build_policy(option: str, overrides: list[str] | None = None) -> Any:
    """A fresh policy of ``spec=<option>`` (no acceptance history), or None if it has none."""
    from hydra.utils import instantiate

    spec_cfg = compose_config([f"spec={option}", *(overrides or [])]).spec
    return instantiate(spec_cfg.policy) if spec_cfg.get("policy") is not None else None


def use_variant(engine: Any, proposer: Any, policy: Any) -> None:
    """Make ``engine`` speculate with ``proposer``/``policy`` from its next step on."""
    require_one_process(engine, "use_variant (swapping the proposer)")
    if engine.has_unfinished():
        raise RuntimeError("use_variant: the engine has unfinished requests; swap only when idle")
    engine.proposer = proposer
    engine.policy = policy
