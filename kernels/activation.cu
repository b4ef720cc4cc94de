// Elementwise activations; `kind` numbers match engine::cuda::act_code. p0..p2 are its parameters.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ float act(int kind, float p0, float p1, float p2, float v) {
  switch (kind) {
    case 0: return v > 0.0f ? v : v * p0;                                   // ReLU (leaky)
    case 1: return sigmoidf_(v);                                            // Sigmoid
    case 2: return tanhf(v);                                                // TanH
    case 3: return v > 0.0f ? v : p0 * (expf(v) - 1.0f);                    // ELU
    case 4: return fabsf(v);                                                // AbsVal
    case 5: return v > 0.0f ? v + log1pf(expf(-v)) : log1pf(expf(v));       // BNLL
    case 6: return powf(p2 + p1 * v, p0);                                   // Power
    case 7: { float lb = p0 < 0.0f ? 1.0f : logf(p0); return expf(lb * (p2 + p1 * v)); }  // Exp
    case 8: { float lb = p0 < 0.0f ? 1.0f : logf(p0); return logf(p2 + p1 * v) / lb; }    // Log
    case 9: return fminf(fmaxf(v, p0), p1);                                 // Clip
    case 10: return v * sigmoidf_(p0 * v);                                  // Swish
    default: return v > p0 ? 1.0f : 0.0f;                                   // Threshold
  }
}

// d f / d x at bottom value x with top value y.
__device__ float act_grad(int kind, float p0, float p1, float p2, float x, float y) {
  switch (kind) {
    case 0: return x > 0.0f ? 1.0f : p0;
    case 1: return y * (1.0f - y);
    case 2: return 1.0f - y * y;
    case 3: return x > 0.0f ? 1.0f : y + p0;
    case 4: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
    case 5: { float e = expf(fminf(x, 50.0f)); return e / (e + 1.0f); }
    case 6: return (p0 == 0.0f || p1 == 0.0f) ? 0.0f : p0 * p1 * powf(p2 + p1 * x, p0 - 1.0f);
    case 7: { float lb = p0 < 0.0f ? 1.0f : logf(p0); return y * lb * p1; }
    case 8: { float lb = p0 < 0.0f ? 1.0f : logf(p0); return p1 / ((p2 + p1 * x) * lb); }
    case 9: return (x >= p0 && x <= p1) ? 1.0f : 0.0f;
    case 10: { float s = sigmoidf_(p0 * x); return p0 * y + s * (1.0f - p0 * y); }
    default: return 0.0f;
  }
}

// y = f(x); x may be y (in place).
extern "C" __global__ void act_fwd_f32(u64 n, int kind, float p0, float p1, float p2, const float* x, float* y) {
  CUDA_LOOP(i, n) y[i] = act(kind, p0, p1, p2, x[i]);
}

// dx = f'(x, y) * dy; dy may be dx (in place), x may be y.
extern "C" __global__ void act_bwd_f32(u64 n, int kind, float p0, float p1, float p2, const float* x,
                                       const float* y, const float* dy, float* dx) {
  CUDA_LOOP(i, n) dx[i] = dy[i] * act_grad(kind, p0, p1, p2, x[i], y[i]);
}
