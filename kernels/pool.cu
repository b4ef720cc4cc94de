// Pooling with Caffe's exact windows (engine::cpu::pool_window is the specification): MAX keeps the
// first maximum (strict >), AVE divides by the window clipped at H+pad, W+pad (padding counts).

struct PoolG {
  int in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw;
};

// Window of output (py, px): [hs, he) x [ws, we) inside the image; size is AVE's divisor.
__device__ void pool_window(const PoolG& g, int ave, int py, int px, int& hs, int& he, int& ws, int& we,
                            int& size) {
  hs = py * g.sh - g.ph;
  ws = px * g.sw - g.pw;
  he = hs + g.kh;
  we = ws + g.kw;
  size = 0;
  if (ave) {
    he = min(he, g.in_h + g.ph);
    we = min(we, g.in_w + g.pw);
    size = (he - hs) * (we - ws);
  }
  hs = max(hs, 0);
  ws = max(ws, 0);
  he = max(min(he, g.in_h), hs);
  we = max(min(we, g.in_w), ws);
}

__device__ int window_argmax(const float* xp, const PoolG& g, int hs, int he, int ws, int we) {
  float best = -CREMA_FLT_MAX;
  int arg = -1;
  for (int y = hs; y < he; ++y)
    for (int x = ws; x < we; ++x) {
      int i = y * g.in_w + x;
      if (arg < 0 || xp[i] > best) {
        best = xp[i];
        arg = i;
      }
    }
  return arg;
}

// Division of 32-bit indices by a divisor known only at run time, by multiply-high and shift
// (the magic number is found once per block): integer division is a long instruction sequence on
// the GPU, and the pooling kernels split every index into plane, row, column and window range.
struct FastDiv {
  unsigned d, m, s;
  __device__ void init(unsigned dd) {
    d = dd;
    s = 0;
    while ((1ull << s) < dd) ++s;
    m = (unsigned)(((1ull << 32) * ((1ull << s) - dd)) / dd + 1);
  }
  // Exact for n < 2^31.
  __device__ __forceinline__ unsigned div(unsigned n) const { return (unsigned)(((u64)__umulhi(n, m) + n) >> s); }
};

// Plain division for tensors too large for 32-bit indices.
struct SlowDiv {
  u64 d;
  __device__ void init(u64 dd) { d = dd; }
  __device__ __forceinline__ u64 div(u64 n) const { return n / d; }
};

// The divisors every pooling kernel uses, set up by thread 0 of each block.
template <typename D>
struct PoolDivs {
  D out_plane, in_plane, out_w, in_w, sh, sw;
};

template <typename D>
__device__ void pool_divs(PoolDivs<D>& v, const PoolG& g) {
  if (threadIdx.x == 0) {
    v.out_plane.init(g.out_h * g.out_w);
    v.in_plane.init(g.in_h * g.in_w);
    v.out_w.init(g.out_w);
    v.in_w.init(g.in_w);
    v.sh.init(g.sh);
    v.sw.init(g.sw);
  }
  __syncthreads();
}

// One thread per output element; planes = N*C. Writes the pooled values to `y` and, for MAX, each
// output's winner (an index within its plane) to `arg`, each when it is given.
template <typename I, typename D>
__device__ void pool_fwd(I planes, const PoolG& g, int ave, const float* x, float* y, int* arg) {
  __shared__ PoolDivs<D> v;
  pool_divs(v, g);
  int in_w = g.in_w;
  I op = (I)g.out_h * g.out_w, ip = (I)g.in_h * in_w;
  CUDA_LOOP_T(I, k, planes * op) {
    I plane = v.out_plane.div(k);
    int r = (int)(k - plane * op), py = (int)v.out_w.div(r), px = r - py * g.out_w;
    const float* xp = x + plane * ip;
    int hs, he, ws, we, size;
    pool_window(g, ave, py, px, hs, he, ws, we, size);
    if (ave) {
      float s = 0.0f;
      for (int yy = hs; yy < he; ++yy) {
        float row = 0.0f;
        for (int xx = ws; xx < we; ++xx) row += xp[yy * in_w + xx];
        s += row;
      }
      if (y) y[k] = s / (float)size;
    } else {
      int a = window_argmax(xp, g, hs, he, ws, we);
      if (y) y[k] = a < 0 ? -CREMA_FLT_MAX : xp[a];
      if (arg) arg[k] = a;
    }
  }
}

// Calls the 32-bit-index variant when `total` elements allow it, else the 64-bit one.
#define POOL_DISPATCH(total, call_u32, call_u64) \
  if ((total) < (1ull << 31)) { call_u32; } else { call_u64; }

extern "C" __global__ void pool_fwd_f32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                        int sh, int sw, int ph, int pw, int ave, const float* x, float* y) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  u64 total = planes * out_h * out_w;
  POOL_DISPATCH(total, (pool_fwd<unsigned, FastDiv>((unsigned)planes, g, ave, x, y, nullptr)),
                (pool_fwd<u64, SlowDiv>(planes, g, ave, x, y, nullptr)))
}

// The outputs whose unclipped window [p*s - pad, p*s - pad + k) covers input row h (or column):
// [p0, p1).
template <typename D>
__device__ __forceinline__ void covering(int h, int pad, int k, int out, const D& s, int& p0, int& p1) {
  p0 = h + pad < k ? 0 : (int)s.div(h + pad - k) + 1;
  p1 = min((int)s.div(h + pad) + 1, out);
}

// One thread per input element: gathers from every output whose window holds it, in output order
// (the CPU's accumulation order), so no atomics and a deterministic result. With `arg` (MAX), an
// output's gradient goes to the input it records as its winner; without it, MAX re-finds winners
// from x.
template <typename I, typename D>
__device__ void pool_bwd(I planes, const PoolG& g, int ave, const float* x, const int* arg, const float* dy,
                         float* dx) {
  __shared__ PoolDivs<D> v;
  pool_divs(v, g);
  int in_w = g.in_w, out_w = g.out_w;
  I op = (I)g.out_h * out_w, ip = (I)g.in_h * in_w;
  CUDA_LOOP_T(I, k, planes * ip) {
    I plane = v.in_plane.div(k);
    int r = (int)(k - plane * ip), h = (int)v.in_w.div(r), w = r - h * in_w;
    const float* dyp = dy + plane * op;
    int py0, py1, px0, px1;
    covering(h, g.ph, g.kh, g.out_h, v.sh, py0, py1);
    covering(w, g.pw, g.kw, out_w, v.sw, px0, px1);
    float acc = 0.0f;
    if (arg) {
      const int* ap = arg + plane * op;
      for (int py = py0; py < py1; ++py)
        for (int px = px0; px < px1; ++px) {
          int o = py * out_w + px;
          if (ap[o] == r) acc += dyp[o];
        }
    } else {
      const float* xp = x + plane * ip;
      for (int py = py0; py < py1; ++py)
        for (int px = px0; px < px1; ++px) {
          int hs, he, ws, we, size;
          pool_window(g, ave, py, px, hs, he, ws, we, size);
          if (h < hs || h >= he || w < ws || w >= we) continue;
          float d = dyp[py * out_w + px];
          if (ave) {
            acc += d / (float)size;
          } else if (window_argmax(xp, g, hs, he, ws, we) == r) {
            acc += d;
          }
        }
    }
    dx[k] = acc;
  }
}

extern "C" __global__ void pool_bwd_f32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                        int sh, int sw, int ph, int pw, int ave, const float* x, const float* dy,
                                        float* dx) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  u64 total = planes * in_h * in_w;
  POOL_DISPATCH(total, (pool_bwd<unsigned, FastDiv>((unsigned)planes, g, ave, x, nullptr, dy, dx)),
                (pool_bwd<u64, SlowDiv>(planes, g, ave, x, nullptr, dy, dx)))
}

// MAX backward in two passes: pool_argmax_i32 records each output's winning input, then
// pool_bwd_max_f32 has each input gather the gradients of the outputs it won.
extern "C" __global__ void pool_argmax_i32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                           int sh, int sw, int ph, int pw, const float* x, int* arg) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  u64 total = planes * out_h * out_w;
  POOL_DISPATCH(total, (pool_fwd<unsigned, FastDiv>((unsigned)planes, g, 0, x, nullptr, arg)),
                (pool_fwd<u64, SlowDiv>(planes, g, 0, x, nullptr, arg)))
}

extern "C" __global__ void pool_bwd_max_f32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                            int sh, int sw, int ph, int pw, const int* arg, const float* dy,
                                            float* dx) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  u64 total = planes * in_h * in_w;
  POOL_DISPATCH(total, (pool_bwd<unsigned, FastDiv>((unsigned)planes, g, 0, nullptr, arg, dy, dx)),
                (pool_bwd<u64, SlowDiv>(planes, g, 0, nullptr, arg, dy, dx)))
}
