// The Python extension module mmfast._C: loading it registers the ops; build_info() says
// what was compiled.
#include <torch/extension.h>

#ifndef MMFAST_TORCH_VERSION
#define MMFAST_TORCH_VERSION "unknown"
#endif
#ifndef MMFAST_CUDA_ARCHS
#define MMFAST_CUDA_ARCHS ""
#endif
#ifndef MMFAST_CUDA_VERSION
#define MMFAST_CUDA_VERSION ""
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = MMFAST_TORCH_VERSION;
  info["cpu_kernels"] = true;
#ifdef MMFAST_WITH_CUDA
  info["cuda_kernels"] = true;
#else
  info["cuda_kernels"] = false;
#endif
  info["cuda_version"] = MMFAST_CUDA_VERSION;
  info["cuda_archs"] = MMFAST_CUDA_ARCHS;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmfast compiled kernels (ops register under torch.ops.mmfast)";
  m.def("build_info", &build_info, "What this build of mmfast compiled");
}
