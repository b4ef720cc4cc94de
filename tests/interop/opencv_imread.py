"""Compares decoded pixels with cv2.imread: RAW holds the files' pixels back to back (H×W×C, BGR
or grey, as crema decodes them). Prints the number of values that differ and the largest difference.

usage: opencv_imread.py RAW color|gray[:HxW] FILE...
With :HxW each image is first resized to H×W with cv2.resize (INTER_LINEAR).
"""
import sys

import cv2
import numpy as np


def main():
    raw, mode = sys.argv[1:3]
    mode, _, size = mode.partition(":")
    flag = cv2.IMREAD_GRAYSCALE if mode == "gray" else cv2.IMREAD_COLOR
    ours = np.fromfile(raw, dtype=np.uint8)
    pos, differ, largest = 0, 0, 0
    for f in sys.argv[3:]:
        theirs = cv2.imread(f, flag)
        if size:
            h, w = (int(v) for v in size.split("x"))
            theirs = cv2.resize(theirs, (w, h), interpolation=cv2.INTER_LINEAR)
        theirs = theirs.reshape(-1)
        mine = ours[pos:pos + theirs.size].astype(int)
        pos += theirs.size
        d = np.abs(mine - theirs)
        differ += int((d > 0).sum())
        largest = max(largest, int(d.max()))
    assert pos == ours.size, "sizes differ: %d decoded values, %d from OpenCV" % (ours.size, pos)
    print(differ, largest)


if __name__ == "__main__":
    main()
