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

// dx = scale (prob - onehot(label)), 0 where the label is ignored. With dtop set, the scale is read
// from the device instead: dtop[0] / stats[0] (see softmax_loss_total_f32), so nothing waits for the
// host.
extern "C" __global__ void softmax_loss_bwd_f32(u64 outer, u64 ch, u64 inner, const float* prob,
                                                const float* labels, int has_ignore, int ignore, float scale,
                                                const float* dtop, const float* stats, float* dx) {
  if (dtop) scale = dtop[0] / stats[0];
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

// The whole loss in one block of 256 threads, with nothing read back by the host: top[0] = sum of
// -log(max(prob[label], FLT_MIN)) / divisor; stats[0] = divisor (fixed, or the number of counted
// positions, at least 1, when by_valid); stats[1] += number of labels outside [0, ch) when none is
// ignored, which makes the loss NaN (the host, reading it later, says which layer and why).
extern "C" __global__ void softmax_loss_total_f32(u64 outer, u64 ch, u64 inner, const float* prob,
                                                  const float* labels, int has_ignore, int ignore,
                                                  float fixed_divisor, int by_valid, float* top,
                                                  float* stats) {
  __shared__ double s_loss[256];
  __shared__ double s_count[256];
  __shared__ unsigned s_bad[256];
  double loss = 0.0, count = 0.0;
  unsigned bad = 0;
  for (u64 k = threadIdx.x; k < outer * inner; k += blockDim.x) {
    int label = (int)labels[k];
    if (has_ignore && label == ignore) continue;
    if (!has_ignore && (labels[k] < 0.0f || label >= (int)ch)) {
      ++bad;
      continue;
    }
    u64 c = (u64)min(max(label, 0), (int)ch - 1);
    float p = prob[(k / inner) * ch * inner + c * inner + k % inner];
    loss += -log((double)fmaxf(p, CREMA_FLT_MIN));
    count += 1.0;
  }
  s_loss[threadIdx.x] = loss;
  s_count[threadIdx.x] = count;
  s_bad[threadIdx.x] = bad;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) {
      s_loss[threadIdx.x] += s_loss[threadIdx.x + w];
      s_count[threadIdx.x] += s_count[threadIdx.x + w];
      s_bad[threadIdx.x] += s_bad[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float norm = by_valid ? fmaxf((float)s_count[0], 1.0f) : fixed_divisor;
    stats[0] = norm;
    stats[1] += (float)s_bad[0];
    top[0] = s_bad[0] ? __int_as_float(0x7fc00000) : (float)s_loss[0] / norm;
  }
}
