"""Benchmark plumbing: device choice, peak-memory measurement, and the mmfast-vs-torch summary.

Every benchmark runs one workload on both backends. ``compare`` times it with
pytest-benchmark, measures its peak memory, and records both so that the session ends with
a table of ratios (torch time / mmfast time, and each side's peak memory) measured in the
same run. Set ``MMFAST_BENCH_JSON=path`` to also write that table as JSON.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
from collections import defaultdict
from typing import Callable

import pytest
import torch

DEVICE = torch.device(
    os.environ.get("MMFAST_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
)
_RESULTS: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)


def randn_rows(n: int, d: int, seed: int) -> torch.Tensor:
    """[n, d] standard-normal rows on DEVICE, the same for a seed whatever the device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen).to(DEVICE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


_LIBC = ctypes.CDLL(None)
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_DEFAULT_MAX = 32 * 2**20  # glibc's largest dynamic mmap threshold on 64-bit


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Extra memory at the peak of one call of ``fn``, in MiB, over what was held before.

    CUDA: the caching allocator's peak. CPU: the resident-set high-water mark (VmHWM, reset
    through /proc/self/clear_refs) while glibc serves every allocation over 64 KiB by mmap, so
    that each tensor's memory is resident exactly while it lives; the threshold is set back
    to glibc's steady-state value (32 MiB) afterwards, the same for both backends' timings.
    """
    gc.collect()
    if DEVICE.type == "cuda":
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        fn()
        return (_rss_kib("VmHWM") - before) / 1024
    except OSError:
        return float("nan")
    finally:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_DEFAULT_MAX)


@pytest.fixture
def compare(benchmark):
    """``compare(group, backend, fn, rounds)``: time ``fn`` and record it for the summary."""

    def run(group: str, backend: str, fn: Callable[[], object], rounds: int = 5) -> None:
        def call() -> None:
            fn()
            synchronize()

        call()  # warm-up: caches, lazy transposes, CUDA context
        peak = peak_memory_mib(call)
        benchmark.group = group
        benchmark.extra_info.update(backend=backend, peak_mib=round(peak, 1), device=str(DEVICE))
        benchmark.pedantic(call, rounds=rounds, iterations=1)  # warmed up above
        _RESULTS[group][backend] = {"median_s": benchmark.stats.stats.median, "peak_mib": peak}

    return run


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    rows = []
    for group, by_backend in sorted(_RESULTS.items()):
        fast, ref = by_backend.get("mmfast"), by_backend.get("torch")
        if not fast:
            continue
        speedup = ref["median_s"] / fast["median_s"] if ref else float("nan")
        mem_ratio = fast["peak_mib"] / ref["peak_mib"] if ref and ref["peak_mib"] > 0 else float("nan")
        rows.append({
            "group": group,
            "mmfast_ms": fast["median_s"] * 1e3,
            "torch_ms": ref["median_s"] * 1e3 if ref else float("nan"),
            "speedup": speedup,
            "mmfast_peak_mib": fast["peak_mib"],
            "torch_peak_mib": ref["peak_mib"] if ref else float("nan"),
            "memory_ratio": mem_ratio,
        })
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor() or "cpu"
    tr = terminalreporter
    tr.section(f"mmfast vs pure PyTorch on {DEVICE} ({device}, {torch.get_num_threads()} threads)")
    tr.write_line(f"{'group':<40} {'mmfast ms':>10} {'torch ms':>10} {'speedup':>8} "
                  f"{'mmfast MiB':>11} {'torch MiB':>10} {'mem ratio':>9}")
    for r in rows:
        tr.write_line(f"{r['group']:<40} {r['mmfast_ms']:>10.2f} {r['torch_ms']:>10.2f} "
                      f"{r['speedup']:>7.2f}x {r['mmfast_peak_mib']:>11.1f} "
                      f"{r['torch_peak_mib']:>10.1f} {r['memory_ratio']:>9.2f}")
    path = os.environ.get("MMFAST_BENCH_JSON")
    if path:
        with open(path, "w") as out:
            json.dump({"device": str(DEVICE), "device_name": device,
                       "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "results": rows}, out, indent=2)
