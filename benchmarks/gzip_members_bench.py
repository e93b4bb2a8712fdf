"""Reading gzipped NIfTI made of many gzip members (bgzip, concatenated files, empty members).

    .venv/bin/python benchmarks/gzip_members_bench.py

Prints wall seconds of ``volume_from_nifti_bytes`` per case, on one process; results are in
benchmarks/README.md §9.
"""

from __future__ import annotations

import gzip
import time

import nibabel as nib
import numpy as np

from mrseg_cohort.io.nifti import volume_from_nifti_bytes


def timed(raw: bytes) -> float:
    start = time.perf_counter()
    volume_from_nifti_bytes(raw, "bench")
    return time.perf_counter() - start


def main() -> None:
    small = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_bytes()
    for n in (40_000, 160_000):
        raw = gzip.compress(small) + gzip.compress(b"", mtime=0) * n
        print(f"a small image and {n} empty members ({len(raw) / 1e6:.1f} MB): {timed(raw):.2f} s")
    data = (np.random.default_rng(0).normal(size=(320, 260, 316)) * 100).astype(np.int16)  # NAKO-sized
    image = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    members = b"".join(gzip.compress(image[i:i + 65280], compresslevel=1, mtime=0)
                       for i in range(0, len(image), 65280))
    one = gzip.compress(image, compresslevel=1, mtime=0)
    print(f"NAKO-sized int16 image in 64 KiB members ({len(members) / 1e6:.0f} MB): {timed(members):.2f} s")
    print(f"the same in one member ({len(one) / 1e6:.0f} MB): {timed(one):.2f} s")


if __name__ == "__main__":
    main()
