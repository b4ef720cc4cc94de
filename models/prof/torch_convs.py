"""Per-convolution times in PyTorch (cuDNN v8 API, benchmark mode, TF32) for the shapes that
conv_shapes.py lists, each direction timed with CUDA events, plus a kernel-category profile of
torchvision's ResNet-50 and GoogLeNet training steps. On the GPU machine:
    /opt/torch/.venv/bin/python models/prof/torch_convs.py resnet50.json vgg16.json
"""
import sys, json, torch, torch.nn.functional as F
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cuda.matmul.allow_tf32 = True
dev = "cuda"
def timeit(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps): fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / reps
for path in sys.argv[1:]:
    convs = json.load(open(path)); tot = [0.0, 0.0, 0.0]
    print("==", path)
    for c in convs:
        x = torch.randn(c['n'], c['c'], c['h'], c['w'], device=dev)
        w = torch.randn(c['k'], c['c'] // c['g'], c['kh'], c['kw'], device=dev) * 0.01
        bias = torch.zeros(c['k'], device=dev) if c['bias'] else None
        args = dict(stride=c['s'], padding=c['p'], groups=c['g'])
        y = F.conv2d(x, w, bias, **args); dy = torch.randn_like(y)
        f = timeit(lambda: F.conv2d(x, w, bias, **args))
        def bw(mask):
            return lambda: torch.ops.aten.convolution_backward(dy, x, w, [c['k']] if c['bias'] else None,
                [c['s']] * 2, [c['p']] * 2, [1, 1], False, [0, 0], c['g'], mask)
        first = c is convs[0]
        d = 0.0 if first else timeit(bw([True, False, False]))
        fl = timeit(bw([False, True, c['bias']]))
        tot[0] += f; tot[1] += d; tot[2] += fl
        print(f"{c['name']:24s} fwd {f:7.3f}  bwd-data {d:7.3f}  bwd-filter {fl:7.3f}")
        del x, w, y, dy
    print(f"TOTAL fwd {tot[0]:.2f}  bwd-data {tot[1]:.2f}  bwd-filter {tot[2]:.2f}  sum {sum(tot):.2f} ms")
    torch.cuda.empty_cache()
# Kernel categories of torchvision's ResNet-50 step (b64, TF32), as torch_anchor runs it.
import torchvision
from torch.profiler import profile, ProfilerActivity
for name, mk, bs in [("resnet50", torchvision.models.resnet50, 64), ("googlenet", lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True), 128)]:
    m = mk().to(dev); x = torch.randn(bs, 3, 224, 224, device=dev); y = torch.randint(0, 1000, (bs,), device=dev)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    def step():
        opt.zero_grad(set_to_none=True); F.cross_entropy(m(x), y).backward(); opt.step()
    for _ in range(5): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5): step()
        torch.cuda.synchronize()
    cats = {}
    for e in p.key_averages():
        if e.device_type.name != "CUDA": continue
        n = e.key.lower(); t = e.self_device_time_total / 5 / 1000
        cat = ("conv" if any(s in n for s in ("conv", "implicit", "gemm", "xmma", "cutlass", "sm90", "wgrad", "dgrad", "fprop", "nchw", "nhwc", "winograd", "fft")) else
               "bn" if "batch_norm" in n or "bn_" in n else "elementwise/other")
        cats[cat] = cats.get(cat, 0) + t
    print("==", name, "kernel time per step by category (ms):", {k: round(v, 2) for k, v in cats.items()})
    print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=90))
    del m, opt; torch.cuda.empty_cache()
