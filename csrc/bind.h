// Binds one device's kernel to an op family's device-independent driver, so that a kernel file
// registers `Bind<driver, kernel>::op` instead of writing an adaptor per op and device:
//   R driver(Kernel kernel, Args... args)  ->  R Bind<driver, kernel>::op(Args... args)
#pragma once

namespace mmfast {

template <auto Driver, auto Kernel>
struct Bind;

template <typename R, typename K, typename... Args, R (*Driver)(K, Args...), K Kernel>
struct Bind<Driver, Kernel> {
  static R op(Args... args) { return Driver(Kernel, args...); }
};

}  // namespace mmfast
