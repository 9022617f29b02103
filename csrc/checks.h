// Argument checks shared by every op: each failure names the op and the argument.
#pragma once

#include <ATen/ATen.h>

namespace mmfast {

inline void check_csr(const char* op, const char* name, const at::Tensor& rowptr,
                      const at::Tensor& col, const at::Tensor& val) {
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.scalar_type() == at::kLong && rowptr.numel() >= 1,
              op, ": ", name, " rowptr must be a non-empty 1-D int64 tensor, got ",
              rowptr.dim(), "-D ", rowptr.scalar_type());
  TORCH_CHECK(col.dim() == 1 && (col.scalar_type() == at::kInt || col.scalar_type() == at::kLong),
              op, ": ", name, " col must be a 1-D int32 or int64 tensor, got ", col.dim(), "-D ",
              col.scalar_type());
  TORCH_CHECK(val.dim() == 1 && val.numel() == col.numel(), op, ": ", name,
              " val must be 1-D with one entry per col entry (", col.numel(), "), got shape ",
              val.sizes());
  TORCH_CHECK(rowptr.device() == col.device() && col.device() == val.device(), op, ": ", name,
              " rowptr, col and val must share a device, got ", rowptr.device(), ", ",
              col.device(), " and ", val.device());
}

// A dense operand: 2-D, float32/float64, on `device`, of `dtype` when one is given.
inline void check_dense(const char* op, const char* name, const at::Tensor& x,
                        const at::Device& device, c10::optional<at::ScalarType> dtype) {
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D [rows, d], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(!dtype || x.scalar_type() == *dtype, op, ": ", name, " is ", x.scalar_type(),
              " but must match the graph values (", *dtype, ")");
  TORCH_CHECK(x.device() == device, op, ": ", name, " is on ", x.device(),
              " but the graph is on ", device);
}

// A float32/float64 matrix that must share dtype and device with `ref` (named `ref_name`).
inline void check_like(const char* op, const char* name, const at::Tensor& x,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D [rows, d], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", x.scalar_type(),
              " but ", ref_name, " is ", ref.scalar_type());
  TORCH_CHECK(x.device() == ref.device(), op, ": ", name, " is on ", x.device(), " but ",
              ref_name, " is on ", ref.device());
}

}  // namespace mmfast
