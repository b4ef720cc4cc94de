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

// One thread per output element; planes = N*C.
template <typename I>
__device__ void pool_fwd(I planes, const PoolG& g, int ave, const float* x, float* y) {
  int in_w = g.in_w, out_w = g.out_w;
  I op = (I)g.out_h * out_w, ip = (I)g.in_h * in_w;
  CUDA_LOOP_T(I, k, planes * op) {
    I plane = k / op;
    int r = (int)(k % op), py = r / out_w, px = r % out_w;
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
      y[k] = s / (float)size;
    } else {
      int a = window_argmax(xp, g, hs, he, ws, we);
      y[k] = a < 0 ? -CREMA_FLT_MAX : xp[a];
    }
  }
}

// Calls the 32-bit-index variant when `total` elements allow it, else the 64-bit one.
#define POOL_DISPATCH(total, call_u32, call_u64) \
  if ((total) < (1ull << 31)) { call_u32; } else { call_u64; }

extern "C" __global__ void pool_fwd_f32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                        int sh, int sw, int ph, int pw, int ave, const float* x, float* y) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  POOL_DISPATCH(planes * out_h * out_w, pool_fwd<unsigned>((unsigned)planes, g, ave, x, y),
                pool_fwd<u64>(planes, g, ave, x, y))
}

// One thread per input element: gathers from every output whose window holds it, in output order
// (the CPU's accumulation order), so no atomics and a deterministic result.
template <typename I>
__device__ void pool_bwd(I planes, const PoolG& g, int ave, const float* x, const float* dy, float* dx) {
  int in_w = g.in_w, out_h = g.out_h, out_w = g.out_w, kh = g.kh, kw = g.kw, sh = g.sh, sw = g.sw,
      ph = g.ph, pw = g.pw;
  I op = (I)out_h * out_w, ip = (I)g.in_h * in_w;
  CUDA_LOOP_T(I, k, planes * ip) {
    I plane = k / ip;
    int r = (int)(k % ip), h = r / in_w, w = r % in_w;
    const float* xp = x + plane * ip;
    const float* dyp = dy + plane * op;
    // Outputs whose unclipped window [p*s - pad, p*s - pad + k) covers h.
    int py0 = h + ph < kh ? 0 : (h + ph - kh) / sh + 1;
    int py1 = min((h + ph) / sh + 1, out_h);
    int px0 = w + pw < kw ? 0 : (w + pw - kw) / sw + 1;
    int px1 = min((w + pw) / sw + 1, out_w);
    float acc = 0.0f;
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
    dx[k] = acc;
  }
}

extern "C" __global__ void pool_bwd_f32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                        int sh, int sw, int ph, int pw, int ave, const float* x, const float* dy,
                                        float* dx) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  POOL_DISPATCH(planes * in_h * in_w, pool_bwd<unsigned>((unsigned)planes, g, ave, x, dy, dx),
                pool_bwd<u64>(planes, g, ave, x, dy, dx))
}

// MAX backward in two passes: pool_argmax_i32 records each output's winning input (as the forward
// pass chose it), then pool_bwd_max_f32 has each input gather the gradients of the outputs it won,
// in output order, so no atomics and the same sums as the CPU.
template <typename I>
__device__ void pool_argmax(I planes, const PoolG& g, const float* x, int* arg) {
  int out_w = g.out_w;
  I op = (I)g.out_h * out_w, ip = (I)g.in_h * g.in_w;
  CUDA_LOOP_T(I, k, planes * op) {
    I plane = k / op;
    int r = (int)(k % op), py = r / out_w, px = r % out_w;
    int hs, he, ws, we, size;
    pool_window(g, 0, py, px, hs, he, ws, we, size);
    arg[k] = window_argmax(x + plane * ip, g, hs, he, ws, we);
  }
}

extern "C" __global__ void pool_argmax_i32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                           int sh, int sw, int ph, int pw, const float* x, int* arg) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  POOL_DISPATCH(planes * out_h * out_w, pool_argmax<unsigned>((unsigned)planes, g, x, arg),
                pool_argmax<u64>(planes, g, x, arg))
}

template <typename I>
__device__ void pool_bwd_max(I planes, const PoolG& g, const int* arg, const float* dy, float* dx) {
  int in_w = g.in_w, out_h = g.out_h, out_w = g.out_w, kh = g.kh, kw = g.kw, sh = g.sh, sw = g.sw,
      ph = g.ph, pw = g.pw;
  I op = (I)out_h * out_w, ip = (I)g.in_h * in_w;
  CUDA_LOOP_T(I, k, planes * ip) {
    I plane = k / ip;
    int r = (int)(k % ip), h = r / in_w, w = r % in_w;
    const int* ap = arg + plane * op;
    const float* dyp = dy + plane * op;
    int py0 = h + ph < kh ? 0 : (h + ph - kh) / sh + 1;
    int py1 = min((h + ph) / sh + 1, out_h);
    int px0 = w + pw < kw ? 0 : (w + pw - kw) / sw + 1;
    int px1 = min((w + pw) / sw + 1, out_w);
    float acc = 0.0f;
    for (int py = py0; py < py1; ++py)
      for (int px = px0; px < px1; ++px) {
        int o = py * out_w + px;
        if (ap[o] == r) acc += dyp[o];
      }
    dx[k] = acc;
  }
}

extern "C" __global__ void pool_bwd_max_f32(u64 planes, int in_h, int in_w, int out_h, int out_w, int kh, int kw,
                                            int sh, int sw, int ph, int pw, const int* arg, const float* dy,
                                            float* dx) {
  PoolG g = {in_h, in_w, out_h, out_w, kh, kw, sh, sw, ph, pw};
  POOL_DISPATCH(planes * in_h * in_w, pool_bwd_max<unsigned>((unsigned)planes, g, arg, dy, dx),
                pool_bwd_max<u64>(planes, g, arg, dy, dx))
}
