"""Size and single-image latency of each exported format, and faces/s of `predict`, on this CPU.

A fold of LMTCNN-1-1 at the real recipes' 227x227 input is trained for a few steps on
synthetic faces, laid out as a scheduler run, and exported with `python -m lmtcnn export`
(every format this TensorFlow makes; latency is the median of 50 single-image runs on
one thread). The weights are barely trained, so sizes and latencies are the real
network's, while the agreement figures (of a near-uniform model) say little. Then
`predict` runs each model on drawn photos of one to three faces that OpenCV's cascade
finds: faces/s from reading the photo to the printed line, the model already loaded,
beside the time the face detection alone takes; each the fastest of --repeats passes.

  python bench/export_formats.py [--steps 10] [--photos 30] [--threads 1] [--repeats 3]
"""

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmtcnn.__main__ import main as lmtcnn_main  # noqa: E402
from lmtcnn.config import Config, build_config, dump_config  # noqa: E402
from lmtcnn.prepare import prepare  # noqa: E402
from lmtcnn.synth import face_photo, synthesize  # noqa: E402

SKINS = ((150, 180, 220), (120, 150, 200), (90, 120, 160), (70, 95, 130))


def train_fold(work, steps, threads):
    """A run directory with fold_0 trained for `steps` steps at 227x227; returns fold_0."""
    from lmtcnn.train import train

    synthesize(os.path.join(work, "raw"), per_fold=300, seed=0)
    prepare(os.path.join(work, "raw"), os.path.join(work, "data"), workers=threads)
    config = build_config({"data": {"data_dir": os.path.join(work, "data")},
                           "train": {"device": "cpu", "batch_size": 16, "max_steps": steps,
                                     "checkpoint_every_steps": steps, "eval_every_steps": 0,
                                     "preprocess_threads": threads, "cpu_threads": threads,
                                     "shuffle_buffer": 256}}, Config)
    run_dir = os.path.join(work, "run")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(dump_config(config))
    train(config, 0, os.path.join(run_dir, "fold_0"), report=lambda event: None)
    return os.path.join(run_dir, "fold_0")


def draw_photos(folder, count):
    """`count` 640x480 JPEG photos of 1-3 faces each; returns (paths, faces drawn)."""
    import cv2

    rng = random.Random(0)
    os.makedirs(folder)
    paths, drawn_faces = [], 0
    for number in range(count):
        faces = rng.randint(1, 3)
        width = rng.randint(90, 150)
        columns = [int((i + 0.5) * 640 / faces) for i in range(faces)]
        drawn = [(x, rng.randint(200, 260), width, rng.choice(SKINS)) for x in columns]
        paths.append(os.path.join(folder, "photo%03d.jpg" % number))
        cv2.imwrite(paths[-1], face_photo(640, 480, drawn, seed=number))
        drawn_faces += faces
    return paths, drawn_faces


def time_predict(model_path, photos, threads, repeats):
    """(faces, seconds) of predict on `photos` with the model loaded beforehand, the
    fastest of `repeats` passes (the machine is shared: slower passes met other work)."""
    from lmtcnn.faces import load_detector
    from lmtcnn.inference import open_model
    from lmtcnn.predict import predict_photos

    model, detector = open_model(model_path, threads=threads), load_detector()
    try:
        predict_photos(photos[:1], model, detector, out=io.StringIO())  # first runs build what later ones reuse
        passes = []
        for _ in range(repeats):
            out = io.StringIO()
            start = time.perf_counter()
            predict_photos(photos, model, detector, out=out)
            passes.append(time.perf_counter() - start)
    finally:
        model.close()
    return out.getvalue().count('"box"'), min(passes)


def time_detection(photos, repeats):
    """Seconds the face detection alone takes on `photos` (reading included), fastest pass."""
    from lmtcnn.faces import find_faces, load_detector, read_photo

    detector = load_detector()
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in photos:
            find_faces(detector, read_photo(path)[0])
        passes.append(time.perf_counter() - start)
    return min(passes)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--photos", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the photos; the fastest counts")
    args = parser.parse_args()
    from lmtcnn.export import FILES, parse_formats

    formats = parse_formats(None)[0] + ["savedmodel"]
    work = tempfile.mkdtemp(prefix="lmtcnn-bench-")
    try:
        workdir = train_fold(work, args.steps, args.threads)
        out = os.path.join(work, "export")
        if lmtcnn_main(["export", "--workdir", workdir, "--out", out, "--format", ",".join(formats),
                        "--threads", str(args.threads)]) != 0:
            sys.exit("the export failed its parity check: no figures from it")
        photos, drawn = draw_photos(os.path.join(work, "photos"), args.photos)
        detection = time_detection(photos, args.repeats)
        print("\npredict on %d drawn 640x480 photos with %d faces, %d thread(s), fastest of %d passes; face "
              "detection alone: %.1f ms a photo" % (
                  len(photos), drawn, args.threads, args.repeats, 1000 * detection / len(photos)))
        print("%-12s %6s %9s %8s" % ("model", "faces", "seconds", "faces/s"))
        for name in formats:
            if name != "savedmodel":
                faces, seconds = time_predict(os.path.join(out, FILES[name]), photos, args.threads, args.repeats)
                print("%-12s %6d %9.2f %8.1f" % (name, faces, seconds, faces / seconds))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
