"""Runs a Caffe deploy net with OpenCV's dnn module on MNIST test images and prints top-1 labels.

usage: opencv_top1.py DEPLOY.prototxt WEIGHTS.caffemodel IMAGES.idx3.gz START COUNT
Prints one predicted label per line, for images [START, START + COUNT).
"""
import gzip
import sys

import cv2
import numpy as np


def main():
    deploy, weights, images, start, count = sys.argv[1:6]
    start, count = int(start), int(count)
    with gzip.open(images, "rb") as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
    net = cv2.dnn.readNetFromCaffe(deploy, weights)
    batch = pixels[start:start + count].astype(np.float32) * 0.00390625
    net.setInput(batch)
    prob = net.forward()
    for p in prob.reshape(count, -1):
        print(int(np.argmax(p)))


if __name__ == "__main__":
    main()
