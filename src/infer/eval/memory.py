"""Peak memory during a run: CUDA allocator peak on GPU, sampled resident set size on CPU."""

from __future__ import annotations

import os

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Current resident set size of this process in MiB (0.0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return 0.0


class PeakMemory:
    """``sample()`` once per step; ``peak_mb`` is the CUDA peak allocation when on a GPU,
    else the largest RSS sampled (the process's whole footprint: weights, KV cache, work)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device
        self.rss_peak = rss_mb()

    def sample(self) -> None:
        self.rss_peak = max(self.rss_peak, rss_mb())

    @property
    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.rss_peak


def weight_mb(model: torch.nn.Module) -> float:
    """MiB of the model's parameters as stored (quantized codes and scales included)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
