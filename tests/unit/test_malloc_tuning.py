"""keep_freed_memory: after it, a freed large activation block is reused without page faults
(before it, glibc unmaps blocks above 32 MiB and every reuse faults each page in again)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig

import pytest

SCRIPT = """
import resource, sys, torch
from infer.malloc_tuning import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "on" else False
x = torch.empty(64 << 18).fill_(1.0)  # 64 MiB of fp32
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.empty(64 << 18).fill_(2.0)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (sysconfig.get_config_var("HOST_GNU_TYPE") or ""),
                    reason="glibc's mallopt only")
def test_freed_block_is_reused_without_page_faults() -> None:
    tuned, faults_on = _faults("on")
    assert tuned, "mallopt refused the thresholds"
    _, faults_off = _faults("off")
    # untuned: every page faults again (16,384 on 4 KiB pages, 32 where THP is "always");
    # tuned: the heap block is still mapped, so (next to) none
    assert faults_on <= max(faults_off // 10, 16), (
        f"tuned reuse faulted {faults_on} times, untuned {faults_off}"
    )
    assert faults_off >= 32, f"the untuned reuse should fault its pages in again ({faults_off})"
