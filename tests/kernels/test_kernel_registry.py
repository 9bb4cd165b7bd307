"""get_op: every op resolves in both impls, with one shared signature."""

from __future__ import annotations

import inspect

import infer_kernels
import pytest
from infer_kernels.registry import IMPLS, get_op, op_names


@pytest.mark.parametrize("name", op_names())
def test_both_impls_share_a_signature(name):
    ref, kernel = get_op(name, "torch"), get_op(name, "triton")
    assert ref is getattr(infer_kernels.reference, f"{name}_ref") and kernel.__name__ == name
    assert list(inspect.signature(ref).parameters) == list(inspect.signature(kernel).parameters)


def test_bad_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid ops: .*paged_decode_attention"):
        get_op("flash_attn", "torch")
    with pytest.raises(ValueError, match="valid impls: torch, triton"):
        get_op("rms_norm", "cuda")
    assert IMPLS == ("torch", "triton")
    assert infer_kernels.get_op is get_op
