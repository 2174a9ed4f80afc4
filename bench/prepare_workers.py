"""How `prepare` scales with decoding processes, and what one copy per image saves.

Prepares the same synthetic release (raw 128x128 faces, stored as 256x256 JPEG quality
100) with 1 and with N workers in one run, and compares the bytes written with what five
per-fold copies (train+val+test of every test fold) would take.

  python bench/prepare_workers.py [--per-fold 400] [--workers 2]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn.prepare import prepare  # noqa: E402
from lmtcnn.synth import synthesize  # noqa: E402


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-fold", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import lmtcnn.tfcompat  # noqa: F401 - loaded before timing; prepare loads it on first use

    work = tempfile.mkdtemp(prefix="lmtcnn-bench-")
    try:
        raw = os.path.join(work, "raw")
        synthesize(raw, per_fold=args.per_fold, seed=0)
        rows = []
        for workers in (1, args.workers):
            out = os.path.join(work, "out-%d" % workers)
            start = time.time()
            manifest = prepare(raw, out, workers=workers)
            seconds = time.time() - start
            rows.append((workers, manifest["images"], seconds))
        records = folder_bytes(os.path.join(out, "records"))
        per_image = records / manifest["images"]
        # Five per-fold copies hold every image of train, val and test of each test fold.
        copies = sum(sum(manifest["folds"][k][r]["count"] for r in ("train", "val", "test")) for k in manifest["folds"])
        print("%d images (synthetic, stored 256x256 JPEG q100)" % manifest["images"])
        print("%-8s %9s %9s" % ("workers", "seconds", "images/s"))
        for workers, images, seconds in rows:
            print("%-8d %9.1f %9.1f" % (workers, seconds, images / seconds))
        print("speed-up with %d workers: %.2fx" % (args.workers, rows[0][2] / rows[1][2]))
        print("records: %.1f MB stored once; per-fold copies would take %.1f MB (%.1fx)"
              % (records / 1e6, copies * per_image / 1e6, copies / manifest["images"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
