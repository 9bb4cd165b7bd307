"""Rotary position embedding (neox layout, as HF Llama) with precomputed cos/sin.

Scalings are folded into the precomputed inverse frequencies, so applying rope is the
same gather + rotate whatever the scheme.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(rot_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies [rot_dim // 2] (fp64 math for fidelity, returned fp32)."""
    inv = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv.float()
    if rope_type == "linear":
        return (inv / float(scaling["factor"])).float()  # type: ignore[index]
    if rope_type == "llama3":
        assert scaling is not None
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled).float()
    raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")


def rope_cos_sin_cache(
    rot_dim: int, max_pos: int, theta: float, scaling: dict[str, Any] | None
) -> torch.Tensor:
    """[max_pos, rot_dim] fp32: first half cos, second half sin."""
    inv = rope_inv_freq(rot_dim, theta, scaling)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def rope_cos_sin(positions: torch.Tensor, cos_sin: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step rope factors, computed once and shared by all layers.

    Returns cos, sin of shape [T, 1, rot_dim] (each half-table repeated twice, neox layout).
    """
    cs = cos_sin.index_select(0, positions)
    half = cs.shape[-1] // 2
    cos, sin = cs[:, :half], cs[:, half:]
    # the sign of rotate_half is folded into sin, so applying rope needs a roll, not neg+cat
    return (
        torch.cat([cos, cos], -1).unsqueeze(1).to(dtype),
        torch.cat([-sin, sin], -1).unsqueeze(1).to(dtype),
    )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, H, D] with per-step factors [T, 1, rot_dim] from ``rope_cos_sin``
    (rot_dim <= D): x*cos + rotate_half(x)*sin, neox layout. Returns a new tensor."""
    rd = cos.shape[-1]
    xr = x[..., :rd] if rd != x.shape[-1] else x
    out = xr * cos + torch.roll(xr, rd // 2, dims=-1) * sin_signed
    return out if rd == x.shape[-1] else torch.cat([out, x[..., rd:]], dim=-1)
