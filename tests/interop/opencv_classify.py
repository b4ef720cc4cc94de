"""Classifies image files with OpenCV's dnn module, preprocessing as `crema classify` does without
crops: read (grey or BGR to the net's channels), bilinear resize to the input, subtract per-channel
mean values, multiply by a scale.

usage: opencv_classify.py DEPLOY.prototxt WEIGHTS.caffemodel CHANNELS HEIGHT WIDTH SCALE MEAN FILE...
MEAN is per-channel values (B,G,R or one value) or a mean.binaryproto of the input's C×H×W size,
subtracted pixel by pixel. FILE may be @LIST, a text file naming one image per line. Prints one
line per file: the net's output values separated by spaces. Images go through the net in batches.
"""
import struct
import sys

import cv2
import numpy as np


def varint(buf, i):
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def read_blobproto(path):
    """The float data and C×H×W shape of a caffe.BlobProto file (legacy or `shape` form)."""
    buf = open(path, "rb").read()
    i, dims, legacy, data = 0, [], {}, []
    while i < len(buf):
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint(buf, i)
            legacy[field] = v
        elif wire == 2:
            n, i = varint(buf, i)
            chunk = buf[i:i + n]
            i += n
            if field == 5:
                data = list(struct.unpack("<%df" % (n // 4), chunk))
            elif field == 7:
                j = 0
                while j < len(chunk):
                    k, j = varint(chunk, j)
                    if k & 7 == 2:
                        m, j = varint(chunk, j)
                        end = j + m
                        while j < end:
                            d, j = varint(chunk, j)
                            dims.append(d)
                    else:
                        d, j = varint(chunk, j)
                        dims.append(d)
        elif wire == 5:
            data.append(struct.unpack("<f", buf[i:i + 4])[0])
            i += 4
        else:
            raise ValueError("unexpected wire type %d in %s" % (wire, path))
    if not dims:
        dims = [legacy.get(f, 0) for f in (1, 2, 3, 4)]
    return np.array(data, dtype=np.float32).reshape(dims[-3:])


def main():
    deploy, weights, channels, height, width, scale, mean = sys.argv[1:8]
    files = []
    for f in sys.argv[8:]:
        if f.startswith("@"):
            files.extend(line for line in open(f[1:]).read().splitlines() if line)
        else:
            files.append(f)
    channels, height, width, scale = int(channels), int(height), int(width), float(scale)
    mean_image = read_blobproto(mean) if mean.endswith(".binaryproto") else None
    mean = [0.0] if mean_image is not None else [float(m) for m in mean.split(",")]
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    net = cv2.dnn.readNetFromCaffe(deploy, weights)
    for start in range(0, len(files), 500):
        classify(net, files[start:start + 500], flag, height, width, scale, mean, mean_image)


def classify(net, files, flag, height, width, scale, mean, mean_image):
    images = []
    for f in files:
        img = cv2.imread(f, flag)
        if img is None:
            raise SystemExit("cannot read image %s" % f)
        if img.shape[0] != height or img.shape[1] != width:
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        images.append(img)
    if mean_image is not None:
        # (x - mean) * scale, as blobFromImages does with per-channel values.
        blob = cv2.dnn.blobFromImages(images, scalefactor=1.0, swapRB=False, crop=False)
        blob = (blob - mean_image[np.newaxis]) * scale
    else:
        blob = cv2.dnn.blobFromImages(images, scalefactor=scale, mean=tuple(mean), swapRB=False, crop=False)
    net.setInput(blob)
    out = net.forward().reshape(len(files), -1)
    for row in out:
        print(" ".join(repr(float(v)) for v in row))


if __name__ == "__main__":
    main()
