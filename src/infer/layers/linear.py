"""Linear layer whose storage and math are delegated to a QuantMethod.

Fused projections (q|k|v, gate|up) are one Linear with several output shards; the loader
fills each shard through ``weight_loader(param, tensor, shard_id)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from infer.quant.base import QuantMethod


class Linear(nn.Module):
    """y = x @ W.T + b with W of logical shape [sum(out_sizes), in_features].

    Args:
        in_features: K.
        out_sizes: output sizes of the fused shards (one int for an unfused layer).
        bias: whether the layer has a bias (one per output row).
        quant: the QuantMethod that owns the weight storage and the matmul.
        dtype: parameter dtype of unquantized weights/bias.
        shard_names: names of the shards in order (e.g. ["q", "k", "v"]) for the loader.
    """

    def __init__(
        self,
        in_features: int,
        out_sizes: int | list[int],
        bias: bool,
        quant: QuantMethod,
        dtype: torch.dtype,
        shard_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.out_sizes = [out_sizes] if isinstance(out_sizes, int) else list(out_sizes)
        self.shard_names = shard_names or [str(i) for i in range(len(self.out_sizes))]
        self.in_features = in_features
        self.out_features = sum(self.out_sizes)
        self.quant = quant
        quant.create_weights(self, in_features, self.out_features, dtype)
        if bias:
            b = nn.Parameter(torch.empty(self.out_features, dtype=dtype), requires_grad=False)
            b.output_dim = 0  # type: ignore[attr-defined]
            self.register_parameter("bias", b)
        else:
            self.bias = None
        for p in self.parameters(recurse=False):
            p.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        # row-parallel layers (tensor parallelism) sum their partial outputs over the ranks
        # through this Communicator (parallel/shard.py sets it); None = not sharded on inputs
        self.tp_reduce: Any = None

    def shard_offset(self, shard_id: str | None) -> tuple[int, int]:
        """(start, size) of a shard along the output dim; the whole range for None."""
        if shard_id is None:
            return 0, self.out_features
        idx = self.shard_names.index(shard_id)
        return sum(self.out_sizes[:idx]), self.out_sizes[idx]

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None
    ) -> None:
        """Copy a checkpoint tensor into ``param`` or one of its shards."""
        start, size = self.shard_offset(shard_id)
        target = param.data
        if shard_id is not None:
            # shards lie along the parameter's output dim; packed formats (AutoAWQ: 8 output
            # columns per int32) store ``output_pack`` logical outputs per element
            pack = getattr(param, "output_pack", 1)
            target = target.narrow(getattr(param, "output_dim", 0), start // pack, size // pack)
        if tuple(target.shape) != tuple(loaded.shape):
            raise ValueError(
                f"checkpoint tensor shape {tuple(loaded.shape)} does not match parameter shard "
                f"shape {tuple(target.shape)} (shard {shard_id!r})"
            )
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in_features] -> [T, out_features]."""
        if self.tp_reduce is None:
            return self.quant.apply(self, x, self.bias)
        # row parallel: partial sums over this rank's inputs, summed over the ranks; the bias
        # is added once, after the sum
        y = self.tp_reduce.all_reduce_sum(self.quant.apply(self, x, None).contiguous())
        return y + self.bias if self.bias is not None else y
