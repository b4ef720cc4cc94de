// Per-channel reductions and BatchNorm over tensors laid out outer x ch x inner (N x C x H*W).
// Index arithmetic is 32-bit (the engine sends tensors of 2^32 elements or more elsewhere): these
// kernels stream memory, and 64-bit division per element would make them compute-bound.
// A reduction runs in two launches with no atomics, so results are deterministic: chan_partial_f64
// gives each channel `splits` blocks that each sum a strided share of its outer*inner elements in
// double, then chan_finish adds a channel's partials in order and applies the operation's formula.

// mode 0: S1 = sum a.  mode 1: S1 = sum a, S2 = sum a*a.  mode 2: S1 = sum a, S2 = sum a*b.
// part holds S1 for block b at part[b] and S2 at part[gridDim.x + b]. 256 threads per block.
// With a gate (gz non-null), a ReLU's backward pass first applies to a: a *= slope where the ReLU's
// input z = gz, or fmaf(gz, gg[c], gb[c]) with gg non-null, is not positive; gout (if non-null)
// receives the gated a (it may be a itself).
extern "C" __global__ void chan_partial_f64(unsigned outer, unsigned ch, unsigned inner, unsigned splits, int mode,
                                            const float* a, const float* b, double* part, const float* gz,
                                            const float* gg, const float* gb, float slope, float* gout) {
  __shared__ double s1[256];
  __shared__ double s2[256];
  unsigned c = blockIdx.x / splits, sp = blockIdx.x % splits;
  unsigned m = outer * inner;
  double acc1 = 0.0, acc2 = 0.0;
  // j = o * inner + i walks with a fixed stride, so (o, i) advance without a division per element.
  unsigned stride = splits * blockDim.x, step_o = stride / inner, step_i = stride - step_o * inner;
  unsigned j = sp * blockDim.x + threadIdx.x, o = j / inner, i = j - o * inner;
  for (; j < m; j += stride) {
    unsigned k = (o * ch + c) * inner + i;
    float av = a[k];
    if (gz) {
      float z = gg ? fmaf(gz[k], gg[c], gb[c]) : gz[k];
      if (!(z > 0.0f)) av *= slope;
      if (gout) gout[k] = av;
    }
    double v = av;
    acc1 += v;
    if (mode == 1) acc2 += v * v;
    else if (mode == 2) acc2 += v * (double)b[k];
    o += step_o;
    i += step_i;
    if (i >= inner) {
      i -= inner;
      ++o;
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

// x_norm = (x - mean[c]) / std[c], and y the same, or with a folded-in Scale (gamma non-null)
// y = x_norm * gamma[c] + beta[c], then max(y, 0) if relu (NaN kept); x may be y.
extern "C" __global__ void bn_norm_f32(unsigned n, unsigned ch, unsigned inner, const float* x, const float* mean,
                                       const float* stdv, float* y, float* x_norm, const float* gamma,
                                       const float* beta, int relu) {
  CUDA_LOOP(k, n) {
    unsigned c = ((unsigned)k / inner) % ch;
    float v = (x[k] - mean[c]) / stdv[c];
    x_norm[k] = v;
    // fmaf: the backward pass recomputes this value to gate a folded-in ReLU and must match it.
    if (gamma) v = fmaf(v, gamma[c], beta[c]);
    if (relu && v < 0.0f) v = 0.0f;
    y[k] = v;
  }
}

// g = dy, times gamma[c] with a folded-in Scale (gamma non-null); then dx = (g - mdy[c] - y * mdyy[c]) / std[c],
// or g / std[c] with global statistics; mdy, mdyy are the means of dy and dy*y, also times gamma[c]; dy may be dx.
// gated: a folded-in ReLU's backward pass first, dy *= slope where fmaf(y, gamma[c], beta[c]) (y without a Scale)
// is not positive.
extern "C" __global__ void bn_bwd_f32(unsigned n, unsigned ch, unsigned inner, int global, const float* y,
                                      const float* dy, const float* mdy, const float* mdyy, const float* stdv,
                                      float* dx, const float* gamma, const float* beta, float slope, int gated) {
  CUDA_LOOP(k, n) {
    unsigned c = ((unsigned)k / inner) % ch;
    float g = dy[k];
    if (gated) {
      float z = gamma ? fmaf(y[k], gamma[c], beta[c]) : y[k];
      if (!(z > 0.0f)) g *= slope;
    }
    if (gamma) {
      float s = gamma[c];
      g = g * s;
      if (!global) g = g - mdy[c] * s - y[k] * (mdyy[c] * s);
    } else if (!global) {
      g = g - mdy[c] - y[k] * mdyy[c];
    }
    dx[k] = g / stdv[c];
  }
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
