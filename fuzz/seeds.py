#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (valid files of every layout each reader accepts)
into CORPUS/<target>/, with nothing but Python's standard library.

    python3 fuzz/seeds.py fuzz/corpus

The artifact, checkpoint and config seeds are a real run's files: pass them with
--artifact, --checkpoint and --config (scripts/fuzz.sh makes them with a two-iteration
`haba distill`).
"""
import argparse
import gzip
import os
import shutil
import struct
import zlib


def write(corpus, target, name, data):
    os.makedirs(os.path.join(corpus, target), exist_ok=True)
    with open(os.path.join(corpus, target, name), "wb") as f:
        f.write(data)


def idx(magic, dims, values):
    return struct.pack(">" + "I" * (1 + len(dims)), magic, *dims) + bytes(values)


def mat_element(ty, payload):
    """A level-5 data element: the 4-byte small form for up to 4 bytes, else tag + padding."""
    if len(payload) <= 4:
        return struct.pack("<HH", ty, len(payload)) + payload.ljust(4, b"\0")
    pad = -len(payload) % 8
    return struct.pack("<II", ty, len(payload)) + payload + b"\0" * pad


def mat_var(name, class_id, dims, ty, data):
    body = (
        mat_element(6, struct.pack("<II", class_id, 0))  # miUINT32 array flags
        + mat_element(5, struct.pack("<" + "i" * len(dims), *dims))  # miINT32 dims
        + mat_element(1, name.encode())  # miINT8 name
        + mat_element(ty, data)
    )
    return struct.pack("<II", 14, len(body)) + body  # miMATRIX


def mat_file(variables, compress):
    text = b"MATLAB 5.0 MAT-file, written by haba's fuzz seeds".ljust(116, b" ")
    out = text + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    for v in variables:
        if compress:
            z = zlib.compress(v)
            out += struct.pack("<II", 15, len(z)) + z  # miCOMPRESSED
        else:
            out += v
    return out


def png(width, height, pixel):
    """An 8-bit RGB PNG."""
    rows = b"".join(
        b"\0" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--artifact")
    parser.add_argument("--checkpoint")
    parser.add_argument("--config")
    args = parser.parse_args()
    c = args.corpus

    images = idx(0x0803, [3, 4, 5], range(60))
    labels = idx(0x0801, [3], [1, 2, 3])
    for name, data in [("images", images), ("labels", labels)]:
        write(c, "idx", name, data)
        write(c, "idx", name + ".gz", gzip.compress(data))

    batch = b"".join(bytes([label]) + bytes(i % 253 for i in range(3072)) for label in (3, 9))
    write(c, "cifar", "batch", b"\0" + batch)
    write(c, "cifar", "names", b"\1" + "".join(f"class{i}\n" for i in range(10)).encode())

    # SVHN: X is height x width x channels x count (uint8), y the labels 1..10 (double).
    h, w, ch, n = 2, 3, 3, 4
    x = mat_var("X", 9, [h, w, ch, n], 2, bytes(i % 256 for i in range(h * w * ch * n)))
    y = mat_var("y", 6, [n, 1], 9, struct.pack("<4d", 1.0, 10.0, 5.0, 3.0))
    for compress in (False, True):
        write(c, "svhn", f"svhn-{'z' if compress else 'plain'}.mat", mat_file([x, y], compress))

    write(c, "image_folder", "rgb.png", png(6, 5, lambda x, y: (101, x * 40, y * 50)))

    for target, path in [("artifact", args.artifact), ("checkpoint", args.checkpoint),
                         ("config", args.config)]:
        if path:
            os.makedirs(os.path.join(c, target), exist_ok=True)
            shutil.copy(path, os.path.join(c, target, os.path.basename(path)))


if __name__ == "__main__":
    main()
