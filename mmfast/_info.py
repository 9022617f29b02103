"""``mmfast.info()``: what was compiled and what this process can use."""
from __future__ import annotations

from typing import Any

import torch

from mmfast import _ext


def info(verbose: bool = True) -> dict[str, Any]:
    """Report the compiled kernels (CPU, CUDA archs, OpenMP) and the runtime; print when verbose."""
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "extension_loaded": _ext.available(),
    }
    if _ext.available():
        report.update(_ext._C.build_info())
    else:
        report["load_error"] = _ext.load_error()
    if torch.cuda.is_available():
        report["cuda_device"] = torch.cuda.get_device_name()
    if verbose:
        width = max(map(len, report))
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return report
