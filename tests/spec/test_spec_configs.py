"""Every spec option instantiates its proposer and its policy with one k (no engine build)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from infer import compose_config
from infer.config_loader import group_options


@pytest.mark.parametrize("option", group_options("spec"))
def test_spec_option_builds_proposer_and_policy(option: str) -> None:
    cfg = compose_config([f"spec={option}"], {})
    proposer = instantiate(cfg.spec.proposer)
    policy = instantiate(cfg.spec.policy)
    if not hasattr(proposer, "propose"):
        # model-based proposers are factories (``_partial_``) that build() calls with the target
        assert callable(proposer) and cfg.spec.proposer.get("_partial_")
        assert cfg.spec.proposer.num_tokens == policy.num_tokens == cfg.spec.num_tokens
    else:
        assert proposer.num_tokens == policy.num_tokens == cfg.spec.num_tokens
        for name in ("propose", "commit", "free"):
            assert callable(getattr(proposer, name))
    assert callable(policy.num_slots) and callable(policy.update)


def test_k_and_policy_kind_override_from_the_command_line() -> None:
    cfg = compose_config(["spec=ngram", "spec.num_tokens=3", "spec.policy.kind=fixed"], {})
    assert instantiate(cfg.spec.proposer).num_tokens == 3
    assert type(instantiate(cfg.spec.policy)).__name__ == "FixedPolicy"
    bad = compose_config(["spec=ngram", "spec.policy.kind=sometimes"], {})
    with pytest.raises(Exception, match="fixed, adaptive"):
        instantiate(bad.spec.policy)
