// Shared by every kernel file: NVRTC compiles them as one translation unit with this prepended.
// No system headers are available under NVRTC, so the few constants we need are spelled out.
typedef unsigned long long u64;
#define CREMA_FLT_MAX 3.402823466e+38f
#define CREMA_FLT_MIN 1.175494351e-38f
// Grid-stride loop: any grid size covers any n.
#define CUDA_LOOP(i, n) \
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); i += (u64)blockDim.x * gridDim.x)
// The same loop with an index type of the kernel's choosing: 32-bit division and remainder are
// several times cheaper than 64-bit ones, so kernels that split an index into coordinates run
// with `unsigned` when n fits (see pool.cu).
#define CUDA_LOOP_T(I, i, n) \
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (I)(n); i += (I)blockDim.x * gridDim.x)
