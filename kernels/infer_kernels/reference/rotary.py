"""Rotary position embedding, neox layout (torch reference, in place, fp32 math)."""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_last_dim_contiguous, check_same_device, check_tensor


def check_rotary_args(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
) -> int:
    """Validate; return rot_dim."""
    check_tensor("positions", positions, ndim=1, dtypes=(torch.int64, torch.int32))
    num_tokens = positions.shape[0]
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    head_dim = q.shape[2]
    check_tensor("q", q, shape=(num_tokens, None, head_dim))
    check_tensor("k", k, shape=(num_tokens, None, head_dim), dtypes=(q.dtype,))
    check_last_dim_contiguous("q", q)
    check_last_dim_contiguous("k", k)
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("cos_sin_cache", cos_sin_cache)
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or rot_dim > head_dim or rot_dim == 0:
        raise ValueError(
            f"cos_sin_cache rot_dim must be even, > 0 and <= head_dim={head_dim}, got {rot_dim}"
        )
    check_same_device(positions=positions, q=q, k=k, cos_sin_cache=cos_sin_cache)
    return rot_dim


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot_dim: int) -> None:
    half = rot_dim // 2
    x1 = x[..., :half].float()
    x2 = x[..., half:rot_dim].float()
    # Both halves are computed before either is written: the writes alias x.
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    x[..., :half] = o1.to(x.dtype)
    x[..., half:rot_dim] = o2.to(x.dtype)


def rotary_embedding_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``rot_dim`` dims of every head of q and k in place (HF Llama layout).

    positions int [T]; q [T, H, D]; k [T, Hkv, D]; cos_sin_cache [max_pos, rot_dim] with
    cos in the first half and sin in the second. For i < rot_dim/2 and x1 = x[i],
    x2 = x[i + rot_dim/2]: x[i] = x1 cos - x2 sin, x[i + rot_dim/2] = x2 cos + x1 sin.
    Returns (q, k), the same tensors.
    """
    rot_dim = check_rotary_args(positions, q, k, cos_sin_cache)
    cs = cos_sin_cache[positions.long()].float()  # [T, rot_dim]
    cos, sin = cs[:, None, : rot_dim // 2], cs[:, None, rot_dim // 2 :]
    _rotate(q, cos, sin, rot_dim)
    _rotate(k, cos, sin, rot_dim)
    return q, k
