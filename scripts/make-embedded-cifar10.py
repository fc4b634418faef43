#!/usr/bin/env python3
"""Make the small CIFAR-10 subset embedded in the haba binary.

CIFAR-10 is by Alex Krizhevsky (Learning Multiple Layers of Features from Tiny Images,
2009), distributed freely by its authors for research at
https://www.cs.toronto.edu/~kriz/cifar.html.

Reads either a class-per-folder copy (SOURCE/train/<class>/*.jpg|png and SOURCE/test/...,
classes in CIFAR-10's order, which is alphabetical) and keeps each kept file's bytes as they
are, or the official binary release (SOURCE/data_batch_1.bin ... test_batch.bin, as in
cifar-10-batches-bin/), whose images it encodes as PNG (lossless, with zlib). It keeps the
first TRAIN_PER_CLASS training and TEST_PER_CLASS test images of every class (file order;
sorted file names for a folder tree) and writes them, with their labels, as
assets/cifar10-subset/cifar10-subset.bin in the format src/data/packed.rs reads:

    b"HABAIMG1"
    u8 K, then K x (u8 length, class name in UTF-8)
    for the splits "train" and "test":
        u8 length, split name; u32 LE N; then N x (u8 label, u32 LE length, image bytes)

Deterministic: the same input gives the same bytes. Standard library only.

Usage: scripts/make-embedded-cifar10.py SOURCE
"""
import os
import struct
import sys
import zlib

TRAIN_PER_CLASS = 300
TEST_PER_CLASS = 100
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "assets", "cifar10-subset", "cifar10-subset.bin")


def from_tree(src, split, per_class):
    """(label, bytes) of the first `per_class` files of every class folder."""
    kept = []
    for label, name in enumerate(CLASSES):
        folder = os.path.join(src, split, name)
        files = sorted(f for f in os.listdir(folder)
                       if f.lower().endswith((".jpg", ".jpeg", ".png")))
        if len(files) < per_class:
            raise SystemExit(f"{folder}: {len(files)} images, fewer than {per_class}")
        for f in files[:per_class]:
            with open(os.path.join(folder, f), "rb") as fh:
                kept.append((label, fh.read()))
    return kept


def png(rgb_planes):
    """A 32x32 RGB PNG of CIFAR's planar bytes (R plane, G plane, B plane)."""
    r, g, b = rgb_planes[:1024], rgb_planes[1024:2048], rgb_planes[2048:]
    rows = b"".join(b"\x00" + bytes(v for px in zip(r[y * 32:(y + 1) * 32],
                                                     g[y * 32:(y + 1) * 32],
                                                     b[y * 32:(y + 1) * 32]) for v in px)
                    for y in range(32))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def from_binary(src, split, per_class):
    """(label, PNG bytes) of the first `per_class` images of every class in file order."""
    files = ["test_batch.bin"] if split == "test" else [f"data_batch_{i}.bin" for i in range(1, 6)]
    kept, count = [], [0] * 10
    for name in files:
        with open(os.path.join(src, name), "rb") as fh:
            data = fh.read()
        for i in range(len(data) // 3073):
            record = data[i * 3073:(i + 1) * 3073]
            label = record[0]
            if count[label] < per_class:
                count[label] += 1
                kept.append((label, png(record[1:])))
    if min(count) < per_class:
        raise SystemExit(f"{src}: fewer than {per_class} {split} images of some class")
    # Class-major, as the tree is.
    return sorted(kept, key=lambda item: item[0])


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    src = sys.argv[1]
    read = from_binary if os.path.exists(os.path.join(src, "test_batch.bin")) else from_tree
    out = bytearray(b"HABAIMG1")
    out += bytes([len(CLASSES)])
    for name in CLASSES:
        out += bytes([len(name)]) + name.encode()
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        items = read(src, split, per_class)
        out += bytes([len(split)]) + split.encode() + struct.pack("<I", len(items))
        for label, data in items:
            out += bytes([label]) + struct.pack("<I", len(data)) + data
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "wb") as fh:
        fh.write(out)
    print(f"{OUT}: {len(out)} bytes")


if __name__ == "__main__":
    main()
