"""The convolution shapes of a net, as JSON for torch_convs.py: `crema inspect` gives each layer's
bottom shape, the prototxt its kernel, stride, pad and group. Run from the repository root:
    python3 models/prof/conv_shapes.py models/resnet50/deploy.prototxt 64,3,224,224 > resnet50.json
"""
import os, re, sys, json, subprocess
model, shape = sys.argv[1], sys.argv[2]
txt = open(model).read()
params = {}
for m in re.finditer(r'layer\s*\{', txt):
    i = m.end(); depth = 1
    while depth:
        depth += {'{': 1, '}': -1}.get(txt[i], 0); i += 1
    body = txt[m.start():i]
    name = re.search(r'name:\s*"([^"]+)"', body).group(1)
    if not re.search(r'type:\s*"Convolution"', body): continue
    g = lambda k, d: int(re.search(k + r':\s*(\d+)', body).group(1)) if re.search(k + r':\s*(\d+)', body) else d
    ks = g('kernel_size', 1)
    params[name] = dict(k=g('num_output', 0), kh=g('kernel_h', ks), kw=g('kernel_w', ks),
                        s=g('stride', 1), p=g('pad', 0), g=g('group', 1),
                        bias=('bias_term: false' not in body))
out = subprocess.run([os.environ.get('CREMA', 'target/release/crema'), 'inspect', model, '--input-shape', shape],
                     capture_output=True, text=True).stdout.splitlines()
shapes = {}
convs = []
for line in out[3:]:
    f = line.split()
    if len(f) < 5 or '->' not in f: continue
    name, typ = f[0], f[1]
    a = f.index('->'); bots = f[2:a]
    # tops, then the first shape (a token like 1x64x112x112)
    j = a + 1; tops = []
    while 'x' not in f[j] or not re.match(r'^\d+x', f[j]): tops.append(f[j]); j += 1
    tshape = [int(v) for v in f[j].split('x')]
    for t in tops: shapes[t] = tshape
    if typ == 'Convolution':
        b = shapes[bots[0]]
        c = dict(name=name, n=b[0], c=b[1], h=b[2], w=b[3], **params[name])
        convs.append(c)
n = int(shape.split(',')[0])
for c in convs: c['n'] = n
json.dump(convs, sys.stdout)
