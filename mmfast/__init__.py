"""mmfast: fast multimodal recommendation on PyTorch C++/CUDA ops."""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension)

from mmfast import _ext, ops
from mmfast._info import info

__version__ = "0.1.0"

__all__ = ["info", "ops", "__version__"]
