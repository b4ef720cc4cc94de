// Fills, copies, BLAS-1 style elementwise ops, reductions, bias, eltwise max, solver updates.

extern "C" __global__ void fill_f32(u64 n, float v, float* y) {
  CUDA_LOOP(i, n) y[i] = v;
}

// dst[dst_off + b*dst_stride + j] (+)= src[src_off + b*src_stride + j] for b < nb, j < block.
extern "C" __global__ void copy_blocks_f32(u64 nb, u64 block, const float* src, u64 src_off, u64 src_stride,
                                           float* dst, u64 dst_off, u64 dst_stride, int accumulate) {
  CUDA_LOOP(i, nb * block) {
    // 32-bit division where the index fits: 64-bit division would dominate this copy's time.
    u64 b, j;
    if (nb * block < (1ull << 32)) {
      unsigned q = (unsigned)i / (unsigned)block;
      b = q;
      j = (unsigned)i - q * (unsigned)block;
    } else {
      b = i / block;
      j = i % block;
    }
    float v = src[src_off + b * src_stride + j];
    float* d = dst + dst_off + b * dst_stride + j;
    *d = accumulate ? *d + v : v;
  }
}

extern "C" __global__ void axpby_f32(u64 n, float alpha, const float* x, float beta, float* y) {
  // beta == 0 overwrites, so NaN/garbage in y never leaks through 0 * y.
  CUDA_LOOP(i, n) y[i] = beta == 0.0f ? alpha * x[i] : alpha * x[i] + beta * y[i];
}

// y = c0 * a + c1 * b, then max(y, 0) if relu (NaN kept); a or b may be y.
extern "C" __global__ void sum2_f32(u64 n, float c0, const float* a, float c1, const float* b, int relu, float* y) {
  CUDA_LOOP(i, n) {
    float v = c0 * a[i];
    v = v + c1 * b[i];
    if (relu && v < 0.0f) v = 0.0f;
    y[i] = v;
  }
}

// Eltwise SUM's backward pass for two bottoms: d0 = c0 * g, d1 = c1 * g (d1 may be null), where g = dy, or with y
// non-null, dy through the backward pass of a ReLU that ran in place on the sum y (times slope where y <= 0).
extern "C" __global__ void sum_bwd2_f32(u64 n, const float* dy, const float* y, float slope, float c0, float* d0,
                                        float c1, float* d1) {
  CUDA_LOOP(i, n) {
    float g = dy[i];
    if (y && !(y[i] > 0.0f)) g *= slope;
    d0[i] = c0 * g;
    if (d1) d1[i] = c1 * g;
  }
}

extern "C" __global__ void scale_f32(u64 n, float alpha, float* y) {
  CUDA_LOOP(i, n) y[i] *= alpha;
}

// y = a * b; `a` may be y itself (in place).
extern "C" __global__ void mul_f32(u64 n, const float* a, const float* b, float* y) {
  CUDA_LOOP(i, n) y[i] = a[i] * b[i];
}

extern "C" __global__ void div_f32(u64 n, const float* a, const float* b, float* y) {
  CUDA_LOOP(i, n) y[i] = a[i] / b[i];
}

extern "C" __global__ void add_sign_f32(u64 n, float alpha, const float* x, float* y) {
  CUDA_LOOP(i, n) {
    float s = x[i] > 0.0f ? 1.0f : (x[i] < 0.0f ? -1.0f : 0.0f);
    y[i] += alpha * s;
  }
}

// Per-block partial sums in double (as the CPU engine sums in f64): mode 0 dot, 1 asum, 2 sumsq.
// Launched with 256 threads per block; partials[blockIdx.x] receives the block's sum.
extern "C" __global__ void reduce_f64(u64 n, int mode, const float* x, const float* y, double* partials) {
  __shared__ double s[256];
  double acc = 0.0;
  CUDA_LOOP(i, n) {
    double a = (double)x[i];
    acc += mode == 0 ? a * (double)y[i] : (mode == 1 ? fabs(a) : a * a);
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = s[0];
}

// y[o, i] = alpha * sum_c x[o, c, i] + beta * y[o, i]
extern "C" __global__ void sum_axis_f32(u64 outer, u64 ch, u64 inner, float alpha, const float* x, float beta,
                                        float* y) {
  CUDA_LOOP(k, outer * inner) {
    u64 o = k / inner, i = k % inner;
    float s = 0.0f;
    for (u64 c = 0; c < ch; ++c) s += x[(o * ch + c) * inner + i];
    y[k] = alpha * s + (beta == 0.0f ? 0.0f : beta * y[k]);
  }
}

// y += b per channel, then max(y, 0) if relu (NaN kept).
extern "C" __global__ void bias_fwd_f32(u64 outer, u64 ch, u64 inner, const float* b, int relu, float* y) {
  if (outer * ch * inner < (1ull << 32)) {
    unsigned in32 = (unsigned)inner, ch32 = (unsigned)ch;
    CUDA_LOOP(k, outer * ch * inner) {
      float v = y[k] + b[((unsigned)k / in32) % ch32];
      if (relu && v < 0.0f) v = 0.0f;
      y[k] = v;
    }
  } else {
    CUDA_LOOP(k, outer * ch * inner) {
      float v = y[k] + b[(k / inner) % ch];
      if (relu && v < 0.0f) v = 0.0f;
      y[k] = v;
    }
  }
}

// One block per channel: db[c] += sum over (o, i) of dy[o, c, i]. 256 threads per block.
extern "C" __global__ void bias_bwd_f32(u64 outer, u64 ch, u64 inner, const float* dy, float* db) {
  __shared__ float s[256];
  u64 c = blockIdx.x;
  float acc = 0.0f;
  for (u64 k = threadIdx.x; k < outer * inner; k += blockDim.x) {
    u64 o = k / inner, i = k % inner;
    acc += dy[(o * ch + c) * inner + i];
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[c] += s[0];
}

extern "C" __global__ void max_accumulate_f32(u64 n, const float* x, float index, int first, float* y, float* arg) {
  CUDA_LOOP(i, n) {
    if (first || x[i] > y[i]) {
      y[i] = x[i];
      arg[i] = index;
    }
  }
}

extern "C" __global__ void max_route_bwd_f32(u64 n, const float* arg, u64 index, const float* dy, float* dx) {
  CUDA_LOOP(i, n) dx[i] = (u64)arg[i] == index ? dy[i] : 0.0f;
}

extern "C" __global__ void sgd_update_f32(u64 n, float lr, float momentum, const float* g, float* h, float* w) {
  CUDA_LOOP(i, n) {
    float v = momentum * h[i] + lr * g[i];
    h[i] = v;
    w[i] -= v;
  }
}

// Counter-based RNG (splitmix64 finaliser): draw `counter + i` of stream `seed`, no state per thread.
__device__ __forceinline__ float uniform01(u64 seed, u64 counter) {
  u64 z = seed + (counter + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// mask = u > ratio ? scale : 0; y = x * mask (x may be y). Draw `*draws + i` for element i; the
// count is advanced afterwards by advance_u64 (the same kernels then draw anew on replay).
extern "C" __global__ void dropout_f32(u64 n, float ratio, float scale, u64 seed, const u64* draws, const float* x,
                                       float* y, float* mask) {
  u64 counter = *draws;
  CUDA_LOOP(i, n) {
    float m = uniform01(seed, counter + i) > ratio ? scale : 0.0f;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

// *c += n, one thread.
extern "C" __global__ void advance_u64(u64* c, u64 n) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *c += n;
}

// ---- Many tensors in one launch (the solver's update and gradient clearing) ----
// A table of `count` entries of 5 u64 each: data, diff, history addresses, the entry's first
// element in the concatenated index space, and lr_mult | decay_mult << 32 (f32 bits). Element i of
// the concatenation belongs to the last entry whose start is <= i.
__device__ __forceinline__ unsigned many_find(const u64* table, unsigned count, u64 i) {
  unsigned lo = 0, hi = count - 1;
  while (lo < hi) {
    unsigned mid = (lo + hi + 1) / 2;
    if (table[5 * mid + 3] <= i) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Caffe's SGD step (sgd_solver.cpp's Normalize, Regularize, ComputeUpdateValue, then
// Blob::Update) for every entry: g = diff * scale, plus decay * w (L2) or decay * sign(w) (L1);
// diff = g; h = momentum * h + rate * g; w -= h. The same float operations as the per-tensor path.
extern "C" __global__ void sgd_many_f32(u64 total, const u64* table, unsigned count, float rate, float momentum,
                                        float weight_decay, int l1, float scale) {
  CUDA_LOOP(i, total) {
    unsigned t = many_find(table, count, i);
    const u64* e = table + 5 * t;
    float* w = (float*)e[0];
    float* d = (float*)e[1];
    float* h = (float*)e[2];
    u64 k = i - e[3];
    unsigned mults_lo = (unsigned)(e[4] & 0xffffffffull), mults_hi = (unsigned)(e[4] >> 32);
    float lr_mult = __uint_as_float(mults_lo), decay_mult = __uint_as_float(mults_hi);
    float g = d[k];
    if (scale != 1.0f) g = scale * g;
    float decay = weight_decay * decay_mult;
    if (decay != 0.0f) {
      float wk = w[k];
      float reg = l1 ? (float)((wk > 0.0f) - (wk < 0.0f)) : wk;
      g = decay * reg + 1.0f * g;
    }
    d[k] = g;
    float v = momentum * h[k] + (rate * lr_mult) * g;
    h[k] = v;
    w[k] -= v;
  }
}

// Sets every element of every entry's first address (data column of the table) to v.
extern "C" __global__ void fill_many_f32(u64 total, const u64* table, unsigned count, float v) {
  CUDA_LOOP(i, total) {
    unsigned t = many_find(table, count, i);
    ((float*)table[5 * t])[i - table[5 * t + 3]] = v;
  }
}

// Crops the prefetcher cut as bytes (N x C x H x W), finished as Caffe's transformer does:
// y = (x - mean) * scale, the mean read from `mean_image` (C x src_h x src_w) at the item's
// uncropped position (place[3i..3i+3] = row offset, column offset, mirrored), or from
// `channel_means` (one per channel); both null: no mean.
extern "C" __global__ void finish_bytes_f32(u64 n, int c, int h, int w, int src_h, int src_w,
                                            const unsigned char* x, const int* place,
                                            const float* mean_image, const float* channel_means,
                                            float scale, float* y) {
  CUDA_LOOP(i, n) {
    // 32-bit division where the index fits (every real batch): 64-bit division is slow.
    u64 item;
    unsigned col, row, ch;
    if (n < (1ull << 32)) {
      unsigned r = (unsigned)i;
      col = r % (unsigned)w; r /= (unsigned)w;
      row = r % (unsigned)h; r /= (unsigned)h;
      ch = r % (unsigned)c; item = r / (unsigned)c;
    } else {
      u64 r = i;
      col = (unsigned)(r % (u64)w); r /= (u64)w;
      row = (unsigned)(r % (u64)h); r /= (u64)h;
      ch = (unsigned)(r % (u64)c); item = r / (u64)c;
    }
    float v = (float)x[i];
    if (mean_image) {
      const int* p = place + 3 * item;
      unsigned sx = p[2] ? (unsigned)w - 1 - col : col;
      v = v - mean_image[((u64)ch * src_h + p[0] + row) * src_w + p[1] + sx];
    } else if (channel_means) {
      v = v - channel_means[ch];
    }
    y[i] = v * scale;
  }
}
