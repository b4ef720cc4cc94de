// Per-channel reductions and BatchNorm over tensors laid out outer x ch x inner (N x C x H*W).
// Index arithmetic is 32-bit (the engine sends tensors of 2^32 elements or more elsewhere): these
// kernels stream memory, and 64-bit division per element would make them compute-bound.
// A reduction runs in two launches with no atomics, so results are deterministic: chan_partial_f64
// gives each channel `splits` blocks that each sum a strided share of its outer*inner elements in
// double, then chan_finish adds a channel's partials in order and applies the operation's formula.

// W floats at vector index k of p: one float (W = 1) or one aligned float4 (W = 4). The engine
// launches a vector kernel only where every pointer is 16-byte aligned and the tensor splits as
// that kernel needs: chan_partial's vectors stay within one channel's run, BatchNorm's
// elementwise ones may straddle two channels (ChanAt).
template <int W>
__device__ __forceinline__ void ld(const float* p, unsigned k, float (&v)[W]) {
  if constexpr (W == 4) {
    float4 t = reinterpret_cast<const float4*>(p)[k];
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
  } else {
    v[0] = p[k];
  }
}

template <int W>
__device__ __forceinline__ void st(float* p, unsigned k, const float (&v)[W]) {
  if constexpr (W == 4) {
    reinterpret_cast<float4*>(p)[k] = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    p[k] = v[0];
  }
}

// mode 0: S1 = sum a.  mode 1: S1 = sum a, S2 = sum a*a.  mode 2: S1 = sum a, S2 = sum a*b.
// part holds S1 for block b at part[b] and S2 at part[gridDim.x + b]. 256 threads per block.
// With a gate (gz non-null), a ReLU's backward pass first applies to a: a *= slope where the ReLU's
// input z = gz, or fmaf(gz, gg[c], gb[c]) with gg non-null, is not positive; gout (if non-null)
// receives the gated a (it may be a itself). `inner` counts vectors of W floats.
// Each thread issues the loads of U vectors before it adds any of them: a reduction that waits on
// one load at a time leaves most of the memory bandwidth idle.
template <int W, int U>
__device__ __forceinline__ void chan_partial(unsigned outer, unsigned ch, unsigned inner, unsigned splits, int mode,
                                             const float* a, const float* b, double* part, const float* gz,
                                             const float* gg, const float* gb, float slope, float* gout) {
  __shared__ double s1[256];
  __shared__ double s2[256];
  unsigned c = blockIdx.x / splits, sp = blockIdx.x % splits;
  unsigned m = outer * inner;
  float zg = gg ? gg[c] : 1.0f, zb = gg ? gb[c] : 0.0f;
  double acc1 = 0.0, acc2 = 0.0;
  // j = o * inner + i walks with a fixed stride, so (o, i) advance without a division per element.
  unsigned stride = splits * blockDim.x, step_o = stride / inner, step_i = stride - step_o * inner;
  unsigned j = sp * blockDim.x + threadIdx.x, o = j / inner, i = j - o * inner;
  for (; j < m; j += U * stride) {
    float va[U][W], vb[U][W];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      unsigned k = (o * ch + c) * inner + i;
      if (j + u * stride < m) {
        ld<W>(a, k, va[u]);
        if (mode == 2) ld<W>(b, k, vb[u]);
        if (gz) {
          float z[W];
          ld<W>(gz, k, z);
#pragma unroll
          for (int w = 0; w < W; ++w) {
            float zz = gg ? fmaf(z[w], zg, zb) : z[w];
            if (!(zz > 0.0f)) va[u][w] *= slope;
          }
          if (gout) st<W>(gout, k, va[u]);
        }
      } else {
#pragma unroll
        for (int w = 0; w < W; ++w) va[u][w] = vb[u][w] = 0.0f;
      }
      o += step_o;
      i += step_i;
      if (i >= inner) {
        i -= inner;
        ++o;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        double v = va[u][w];
        acc1 += v;
        if (mode == 1) acc2 += v * v;
        else if (mode == 2) acc2 += v * (double)vb[u][w];
      }
    }
  }
  s1[threadIdx.x] = acc1;
  s2[threadIdx.x] = acc2;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) {
      s1[threadIdx.x] += s1[threadIdx.x + w];
      s2[threadIdx.x] += s2[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    part[blockIdx.x] = s1[0];
    part[gridDim.x + blockIdx.x] = s2[0];
  }
}

extern "C" __global__ void chan_partial_f64(unsigned outer, unsigned ch, unsigned inner, unsigned splits, int mode,
                                            const float* a, const float* b, double* part, const float* gz,
                                            const float* gg, const float* gb, float slope, float* gout) {
  chan_partial<1, 4>(outer, ch, inner, splits, mode, a, b, part, gz, gg, gb, slope, gout);
}

extern "C" __global__ void chan_partial4_f64(unsigned outer, unsigned ch, unsigned inner, unsigned splits, int mode,
                                             const float* a, const float* b, double* part, const float* gz,
                                             const float* gg, const float* gb, float slope, float* gout) {
  chan_partial<4, 2>(outer, ch, inner, splits, mode, a, b, part, gz, gg, gb, slope, gout);
}

// One thread per channel; `total` = ch * splits partials per sum, `scale` = 1 / (outer*inner).
// op 0: o1[c] += S1 (bias gradient).  op 3: o1[c] += S2 (scale gradient).  op 1: o1 = mean = S1*scale, o2 = biased variance
// S2*scale - mean^2 (BatchNorm statistics).  op 2: o1 = S1*scale, o2 = S2*scale (BatchNorm backward).  op 4: as op 2,
// and g1[c] += S2, g2[c] += S1 (BatchNorm with its Scale folded in: the scale's and the bias's gradients).
extern "C" __global__ void chan_finish_f64(u64 ch, u64 splits, int op, double scale, const double* part,
                                           float* o1, float* o2, float* g1, float* g2) {
  u64 total = ch * splits;
  CUDA_LOOP(c, ch) {
    double a = 0.0, b = 0.0;
    for (u64 s = 0; s < splits; ++s) {
      a += part[c * splits + s];
      b += part[total + c * splits + s];
    }
    if (op == 0) {
      o1[c] += (float)a;
    } else if (op == 3) {
      o1[c] += (float)b;
    } else if (op == 1) {
      double mean = a * scale;
      double var = b * scale - mean * mean;
      o1[c] = (float)mean;
      o2[c] = (float)(var > 0.0 ? var : 0.0);
    } else {
      o1[c] = (float)(a * scale);
      o2[c] = (float)(b * scale);
      if (op == 4) {
        g1[c] += (float)b;
        g2[c] += (float)a;
      }
    }
  }
}

// std[c] = sqrt(var[c] + eps).
extern "C" __global__ void bn_std_f32(u64 ch, const float* var, float eps, float* stdv) {
  CUDA_LOOP(c, ch) stdv[c] = sqrtf(var[c] + eps);
}

// Where element (vector) k of an outer x ch x inner tensor lies: its first float's channel c0 and
// the following channel c1 (wrapping at ch), and how many of its W floats (0..W) sit in c0. A
// vector of W = 4 floats spans at most two channels when inner >= 4 (the engine checks).
template <int W>
struct ChanAt {
  unsigned c0, c1, in0;
  __device__ __forceinline__ ChanAt(unsigned k, unsigned ch, unsigned inner) {
    unsigned p = k * W, row = p / inner, r = p - row * inner;
    c0 = row % ch;
    c1 = c0 + 1 == ch ? 0 : c0 + 1;
    in0 = inner - r < (unsigned)W ? inner - r : (unsigned)W;
  }
  // The value of per-channel array a for float w of the vector.
  __device__ __forceinline__ float pick(const float* a, int w) const {
    return (unsigned)w < in0 ? a[c0] : a[c1];
  }
};

// x_norm = (x - mean[c]) / std[c], and y the same, or with a folded-in Scale (gamma non-null)
// y = x_norm * gamma[c] + beta[c], then max(y, 0) if relu (NaN kept); x may be y. n counts
// vectors of W floats.
template <int W>
__device__ __forceinline__ void bn_norm(unsigned n, unsigned ch, unsigned inner, const float* x, const float* mean,
                                        const float* stdv, float* y, float* x_norm, const float* gamma,
                                        const float* beta, int relu) {
  CUDA_LOOP_T(unsigned, k, n) {
    ChanAt<W> at(k, ch, inner);
    float v[W], xn[W];
    ld<W>(x, k, v);
#pragma unroll
    for (int w = 0; w < W; ++w) {
      xn[w] = (v[w] - at.pick(mean, w)) / at.pick(stdv, w);
      // fmaf: the backward pass recomputes this value to gate a folded-in ReLU and must match it.
      float t = gamma ? fmaf(xn[w], at.pick(gamma, w), at.pick(beta, w)) : xn[w];
      if (relu && t < 0.0f) t = 0.0f;
      v[w] = t;
    }
    st<W>(x_norm, k, xn);
    st<W>(y, k, v);
  }
}

extern "C" __global__ void bn_norm_f32(unsigned n, unsigned ch, unsigned inner, const float* x, const float* mean,
                                       const float* stdv, float* y, float* x_norm, const float* gamma,
                                       const float* beta, int relu) {
  bn_norm<1>(n, ch, inner, x, mean, stdv, y, x_norm, gamma, beta, relu);
}

extern "C" __global__ void bn_norm4_f32(unsigned n, unsigned ch, unsigned inner, const float* x, const float* mean,
                                        const float* stdv, float* y, float* x_norm, const float* gamma,
                                        const float* beta, int relu) {
  bn_norm<4>(n, ch, inner, x, mean, stdv, y, x_norm, gamma, beta, relu);
}

// g = dy, times gamma[c] with a folded-in Scale (gamma non-null); then dx = (g - mdy[c] - y * mdyy[c]) / std[c],
// or g / std[c] with global statistics; mdy, mdyy are the means of dy and dy*y, also times gamma[c]; dy may be dx.
// gated: a folded-in ReLU's backward pass first, dy *= slope where fmaf(y, gamma[c], beta[c]) (y without a Scale)
// is not positive. n counts vectors of W floats.
template <int W>
__device__ __forceinline__ void bn_bwd(unsigned n, unsigned ch, unsigned inner, int global, const float* y,
                                       const float* dy, const float* mdy, const float* mdyy, const float* stdv,
                                       float* dx, const float* gamma, const float* beta, float slope, int gated) {
  CUDA_LOOP_T(unsigned, k, n) {
    ChanAt<W> at(k, ch, inner);
    float yv[W], g[W];
    ld<W>(y, k, yv);
    ld<W>(dy, k, g);
#pragma unroll
    for (int w = 0; w < W; ++w) {
      float t = g[w];
      float s = gamma ? at.pick(gamma, w) : 1.0f;
      if (gated) {
        float z = gamma ? fmaf(yv[w], s, at.pick(beta, w)) : yv[w];
        if (!(z > 0.0f)) t *= slope;
      }
      if (gamma) {
        t = t * s;
        if (!global) t = t - at.pick(mdy, w) * s - yv[w] * (at.pick(mdyy, w) * s);
      } else if (!global) {
        t = t - at.pick(mdy, w) - yv[w] * at.pick(mdyy, w);
      }
      g[w] = t / at.pick(stdv, w);
    }
    st<W>(dx, k, g);
  }
}

extern "C" __global__ void bn_bwd_f32(unsigned n, unsigned ch, unsigned inner, int global, const float* y,
                                      const float* dy, const float* mdy, const float* mdyy, const float* stdv,
                                      float* dx, const float* gamma, const float* beta, float slope, int gated) {
  bn_bwd<1>(n, ch, inner, global, y, dy, mdy, mdyy, stdv, dx, gamma, beta, slope, gated);
}

extern "C" __global__ void bn_bwd4_f32(unsigned n, unsigned ch, unsigned inner, int global, const float* y,
                                       const float* dy, const float* mdy, const float* mdyy, const float* stdv,
                                       float* dx, const float* gamma, const float* beta, float slope, int gated) {
  bn_bwd<4>(n, ch, inner, global, y, dy, mdy, mdyy, stdv, dx, gamma, beta, slope, gated);
}

// y = x * s[c]; x may be y.
extern "C" __global__ void chan_scale_f32(unsigned n, unsigned ch, unsigned inner, const float* s, const float* x,
                                          float* y) {
  CUDA_LOOP(k, n) y[k] = x[k] * s[((unsigned)k / inner) % ch];
}

// y = x * s[c] + b[c] (b may be null); x may be y.
extern "C" __global__ void chan_affine_f32(unsigned n, unsigned ch, unsigned inner, const float* s, const float* b,
                                           const float* x, float* y) {
  CUDA_LOOP(k, n) {
    unsigned c = ((unsigned)k / inner) % ch;
    float v = x[k] * s[c];
    y[k] = b ? v + b[c] : v;
  }
}
