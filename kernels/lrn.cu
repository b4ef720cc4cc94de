// Local response normalisation, Caffe's ACROSS_CHANNELS and WITHIN_CHANNEL (engine::cpu is the spec).

// scale = k + a * sum_{c' in [c-pre, c+post]} x^2, y = x * scale^-beta (a = alpha / local_size).
template <typename I>
__device__ void lrn_cross_fwd(I total, int channels, I plane, int pre, int post, float a, float beta, float k,
                              const float* x, float* y, float* scale) {
  CUDA_LOOP_T(I, i, total) {
    int c = (int)((i / plane) % channels);
    I base = i - (I)c * plane;  // element (n, 0, j)
    int lo = max(c - pre, 0), hi = min(c + post, channels - 1);
    float acc = 0.0f;
    for (int cc = lo; cc <= hi; ++cc) {
      float v = x[base + (I)cc * plane];
      acc += v * v;
    }
    float s = k + a * acc;
    scale[i] = s;
    y[i] = x[i] * powf(s, -beta);
  }
}

// 32-bit index arithmetic (cheaper division) when `total` allows it.
extern "C" __global__ void lrn_cross_fwd_f32(u64 total, int channels, u64 plane, int pre, int post, float a,
                                             float beta, float k, const float* x, float* y, float* scale) {
  if (total < (1ull << 31))
    lrn_cross_fwd<unsigned>((unsigned)total, channels, (unsigned)plane, pre, post, a, beta, k, x, y, scale);
  else
    lrn_cross_fwd<u64>(total, channels, plane, pre, post, a, beta, k, x, y, scale);
}

// dx = dy scale^-beta - cache x sum_{c' in [c-post, c+pre]} dy y / scale (cache = 2 alpha beta / size).
template <typename I>
__device__ void lrn_cross_bwd(I total, int channels, I plane, int pre, int post, float cache, float beta,
                              const float* x, const float* y, const float* scale, const float* dy, float* dx) {
  CUDA_LOOP_T(I, i, total) {
    int c = (int)((i / plane) % channels);
    I base = i - (I)c * plane;
    int lo = max(c - post, 0), hi = min(c + pre, channels - 1);
    float acc = 0.0f;
    for (int cc = lo; cc <= hi; ++cc) {
      I q = base + (I)cc * plane;
      acc += dy[q] * y[q] / scale[q];
    }
    dx[i] = dy[i] * powf(scale[i], -beta) - cache * x[i] * acc;
  }
}

extern "C" __global__ void lrn_cross_bwd_f32(u64 total, int channels, u64 plane, int pre, int post, float cache,
                                             float beta, const float* x, const float* y, const float* scale,
                                             const float* dy, float* dx) {
  if (total < (1ull << 31))
    lrn_cross_bwd<unsigned>((unsigned)total, channels, (unsigned)plane, pre, post, cache, beta, x, y, scale, dy,
                            dx);
  else
    lrn_cross_bwd<u64>(total, channels, plane, pre, post, cache, beta, x, y, scale, dy, dx);
}

// WITHIN_CHANNEL: scale = 1 + alpha * avg (AVE pool of x^2, local_size window, pad (size-1)/2,
// divisor clipped at H+pad), y = x * scale^-beta.
extern "C" __global__ void lrn_within_fwd_f32(u64 total, int h, int w, int size, float alpha, float beta,
                                              const float* x, float* y, float* scale) {
  int pad = (size - 1) / 2;
  u64 plane = (u64)h * w;
  CUDA_LOOP(i, total) {
    int r = (int)(i % plane), py = r / w, px = r % w;
    const float* xp = x + (i - r);
    int hs = py - pad, ws = px - pad;
    int he = min(hs + size, h + pad), we = min(ws + size, w + pad);
    int div = (he - hs) * (we - ws);
    hs = max(hs, 0);
    ws = max(ws, 0);
    he = min(he, h);
    we = min(we, w);
    float s = 0.0f;
    for (int yy = hs; yy < he; ++yy) {
      float row = 0.0f;
      for (int xx = ws; xx < we; ++xx) {
        float v = xp[yy * w + xx];
        row += v * v;
      }
      s += row;
    }
    float sc = 1.0f + alpha * (s / (float)div);
    scale[i] = sc;
    y[i] = x[i] * powf(sc, -beta);
  }
}

// davg = -beta alpha dy y / scale, the gradient reaching the average pool.
extern "C" __global__ void lrn_within_davg_f32(u64 n, float alpha, float beta, const float* y, const float* scale,
                                               const float* dy, float* davg) {
  CUDA_LOOP(i, n) davg[i] = -beta * alpha * (dy[i] * y[i] / scale[i]);
}

// dx = dy scale^-beta + 2 x dsq, dsq being davg routed back through the pool.
extern "C" __global__ void lrn_within_dx_f32(u64 n, float beta, const float* x, const float* scale,
                                             const float* dy, const float* dsq, float* dx) {
  CUDA_LOOP(i, n) dx[i] = dy[i] * powf(scale[i], -beta) + 2.0f * x[i] * dsq[i];
}
