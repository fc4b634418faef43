#!/usr/bin/env python3
"""Extract the small Fashion-MNIST subset embedded in the haba binary.

Reads the original IDX files (the Debian package `dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist) and keeps the first TRAIN_PER_CLASS training and
TEST_PER_CLASS test images of every class, in file order, as gzipped IDX files in
assets/fashion-mnist-subset/. Deterministic: the same input gives the same bytes.

Usage: scripts/make-embedded-subset.py [SOURCE_DIR]
"""
import gzip
import os
import struct
import sys

TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "assets", "fashion-mnist-subset")


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        size = rows * cols
        body = data[16:]
        return [body[i * size:(i + 1) * size] for i in range(n)], (rows, cols)
    if magic == 2049:
        return list(data[8:8 + n]), None
    raise SystemExit(f"{path}: unexpected IDX magic {magic}")


def find(src, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(src, name)):
            return os.path.join(src, name)
    raise SystemExit(f"{stem}(.gz) not found in {src}")


def write(prefix, images, labels, dims):
    rows, cols = dims
    img = struct.pack(">IIII", 2051, len(images), rows, cols) + b"".join(images)
    lab = struct.pack(">II", 2049, len(labels)) + bytes(labels)
    for name, payload in ((f"{prefix}-images-idx3-ubyte.gz", img),
                          (f"{prefix}-labels-idx1-ubyte.gz", lab)):
        # mtime=0 keeps the output byte-identical across runs.
        with open(os.path.join(OUT, name), "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
                f.write(payload)


def subset(src, prefix, per_class):
    images, dims = read_idx(find(src, f"{prefix}-images-idx3-ubyte"))
    labels, _ = read_idx(find(src, f"{prefix}-labels-idx1-ubyte"))
    kept_img, kept_lab, count = [], [], [0] * 10
    for im, lab in zip(images, labels):
        if count[lab] < per_class:
            count[lab] += 1
            kept_img.append(im)
            kept_lab.append(lab)
    return kept_img, kept_lab, dims


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    os.makedirs(OUT, exist_ok=True)
    write("train", *subset(src, "train", TRAIN_PER_CLASS))
    write("t10k", *subset(src, "t10k", TEST_PER_CLASS))


if __name__ == "__main__":
    main()
