// Softmax over the middle axis of outer x ch x inner, and the multinomial logistic loss on it.

// One thread per (o, i) column.
extern "C" __global__ void softmax_fwd_f32(u64 outer, u64 ch, u64 inner, const float* x, float* y) {
  CUDA_LOOP(k, outer * inner) {
    u64 o = k / inner, i = k % inner;
    const float* xo = x + o * ch * inner + i;
    float* yo = y + o * ch * inner + i;
    float m = -CREMA_FLT_MAX;
    for (u64 c = 0; c < ch; ++c) m = fmaxf(m, xo[c * inner]);
    float s = 0.0f;
    for (u64 c = 0; c < ch; ++c) {
      float e = expf(xo[c * inner] - m);
      yo[c * inner] = e;
      s += e;
    }
    for (u64 c = 0; c < ch; ++c) yo[c * inner] /= s;
  }
}

// dx = y (dy - sum_c dy y); dy may be dx (in place): each thread reads its column before writing it.
extern "C" __global__ void softmax_bwd_f32(u64 outer, u64 ch, u64 inner, const float* y, const float* dy,
                                           float* dx) {
  CUDA_LOOP(k, outer * inner) {
    u64 base = (k / inner) * ch * inner + k % inner;
    float dot = 0.0f;
    for (u64 c = 0; c < ch; ++c) dot += dy[base + c * inner] * y[base + c * inner];
    for (u64 c = 0; c < ch; ++c) {
      u64 q = base + c * inner;
      dx[q] = (dy[q] - dot) * y[q];
    }
  }
}

// Per position: out[2k] = -log(max(prob[label], FLT_MIN)), out[2k+1] = 1 if counted, else both 0.
extern "C" __global__ void softmax_loss_f32(u64 outer, u64 ch, u64 inner, const float* prob, const float* labels,
                                            int has_ignore, int ignore, double* out) {
  CUDA_LOOP(k, outer * inner) {
    int label = (int)labels[k];
    if (has_ignore && label == ignore) {
      out[2 * k] = 0.0;
      out[2 * k + 1] = 0.0;
      continue;
    }
    u64 c = (u64)min(max(label, 0), (int)ch - 1);
    float p = prob[(k / inner) * ch * inner + c * inner + k % inner];
    out[2 * k] = -log((double)fmaxf(p, CREMA_FLT_MIN));
    out[2 * k + 1] = 1.0;
  }
}

extern "C" __global__ void softmax_loss_bwd_f32(u64 outer, u64 ch, u64 inner, const float* prob,
                                                const float* labels, int has_ignore, int ignore, float scale,
                                                float* dx) {
  CUDA_LOOP(q, outer * ch * inner) {
    u64 i = q % inner, c = (q / inner) % ch, o = q / (ch * inner);
    int label = (int)labels[o * inner + i];
    if (has_ignore && label == ignore) {
      dx[q] = 0.0f;
    } else {
      float t = (int)c == label ? 1.0f : 0.0f;
      dx[q] = scale * (prob[q] - t);
    }
  }
}
