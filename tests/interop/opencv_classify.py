"""Classifies image files with OpenCV's dnn module, preprocessing as `crema classify` does without
crops: read (grey or BGR to the net's channels), bilinear resize to the input, subtract per-channel
mean values, multiply by a scale.

usage: opencv_classify.py DEPLOY.prototxt WEIGHTS.caffemodel CHANNELS HEIGHT WIDTH SCALE MEAN[,MEAN..] FILE...
Prints one line per file: the net's output values separated by spaces.
"""
import sys

import cv2
import numpy as np


def main():
    deploy, weights, channels, height, width, scale, mean = sys.argv[1:8]
    files = sys.argv[8:]
    channels, height, width, scale = int(channels), int(height), int(width), float(scale)
    mean = [float(m) for m in mean.split(",")]
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    net = cv2.dnn.readNetFromCaffe(deploy, weights)
    images = []
    for f in files:
        img = cv2.imread(f, flag)
        if img.shape[0] != height or img.shape[1] != width:
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        images.append(img)
    blob = cv2.dnn.blobFromImages(images, scalefactor=scale, mean=tuple(mean), swapRB=False, crop=False)
    net.setInput(blob)
    out = net.forward().reshape(len(files), -1)
    for row in out:
        print(" ".join(repr(float(v)) for v in row))


if __name__ == "__main__":
    main()
