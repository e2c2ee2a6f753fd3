"""Benchmark: are reconstructions of the same person more alike than those of different people?

Usage (from the repository root)::

    python benchmarks/identity_consistency.py                       # default reconstruction
    python benchmarks/identity_consistency.py --detector hog --landmarks dlib68
    python benchmarks/identity_consistency.py --dense
    python benchmarks/identity_consistency.py --identity              # with the FaceNet identity term

``../shared/data/faces/bald_guys.jpg`` is a collage of 24 photos of four people, six each (the
labels, keyed by face position, are those of ``tests/test_nets_facenet.py``). Every face is
reconstructed (as ``faceclip reconstruct --all-faces`` does, without writing files); its neutral
shape (identity coefficients only, expression zero) is cut to the face region and aligned to
the mean face by a similarity transform. Distances are mean per-vertex distances in mm.

Prints the mean distance between shapes of the same person and of different people, their
ratio, and ends with ``identity_1nn_by_shape: X``: the fraction of faces whose nearest other
shape belongs to the same person (chance: 5/23 = 0.22).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from faceclip.fit.identity import DEFAULT_IDENTITY_WEIGHT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "faces" / "bald_guys.jpg"
#: Face centres (image pixels of bald_guys.jpg) of each person's six photos.
IDENTITIES = {
    "vin_diesel": [(149, 170), (384, 300), (622, 193), (141, 467), (643, 520), (129, 1384)],
    "jason_statham": [(396, 110), (948, 193), (399, 519), (952, 499), (141, 776), (500, 945)],
    "bruce_willis": [(870, 911), (1137, 849), (1188, 1153), (141, 1067), (451, 1365), (870, 1323)],
    "dwayne_johnson": [(1576, 258), (1885, 491), (1706, 753), (1158, 1405), (1519, 1404), (1879, 1384)],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--landmarks", default="mediapipe", help="mediapipe, dlib68 or net")
    ap.add_argument("--landmark-net", default=None, help="network file for --landmarks net")
    ap.add_argument("--dense", action="store_true", help="also fit the calibrated dense points")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--init", default="mean", choices=["mean", "regressor"])
    ap.add_argument("--identity", nargs="?", type=float, const=DEFAULT_IDENTITY_WEIGHT, default=0.0, metavar="WEIGHT",
                    help="fit with the FaceNet identity term (as faceclip reconstruct --identity)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a fitting setting (a flat name of FitConfig.with_overrides), e.g. w_dense=0.005")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from faceclip.evaluate.geometry import fit_similarity
    from faceclip.reconstruction import ReconstructOptions, Reconstructor, working_copy
    from faceclip.io.images import load_image

    if not PHOTO.is_file():
        print(f"error: {PHOTO} not found (../shared/data beside the repository)", file=sys.stderr)
        return 2
    rec = Reconstructor(ReconstructOptions(all_faces=True, detector=args.detector, landmarks=args.landmarks,
                                           dense=args.dense, fast=args.fast,
                                           init=args.init, landmark_net=args.landmark_net,
                                           identity_weight=args.identity))
    if args.set:
        rec.fitter.config = rec.fitter.config.with_overrides(
            **{k: float(v) for k, v in (item.split("=") for item in args.set)})
    full = load_image(PHOTO)
    work, scale = working_copy(full)
    t0 = time.perf_counter()
    faces = rec.detect(work, str(PHOTO))
    centres_people = [(name, np.array(c, np.float64)) for name, cs in IDENTITIES.items() for c in cs]
    face_v = rec.model.region_mask("face").numpy()
    mean = rec.model.mean_mm.numpy()[face_v].astype(np.float64)
    shapes, labels = [], []
    for face in faces:
        box = face.extra.get("boxes", {}).get("hog", face.box) / scale
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        d = [np.linalg.norm(centre - c) for _, c in centres_people]
        k = int(np.argmin(d))
        if d[k] > 60:
            continue
        result, _, _, _ = rec.fit_detected(work, face)
        ident = result.params.identity
        v = rec.model.vertices(ident, torch.zeros_like(result.params.expression))[0].numpy()[face_v]
        shapes.append(fit_similarity(v, mean).apply(v))
        labels.append(centres_people[k][0])
    seconds = time.perf_counter() - t0
    n = len(shapes)
    labels_a = np.array(labels)
    D = np.array([[np.linalg.norm(a - b, axis=1).mean() for b in shapes] for a in shapes])
    same = labels_a[:, None] == labels_a[None, :]
    off = ~np.eye(n, dtype=bool)
    d_same, d_diff = D[same & off].mean(), D[~same].mean()
    np.fill_diagonal(D, np.inf)
    nn = (labels_a[D.argmin(1)] == labels_a).mean()
    print(f"front-end: detector {args.detector}, landmarks {args.landmarks}, dense {args.dense}, init {args.init}, "
          f"identity term {args.identity:g} "
          f"{' '.join(args.set)}; "
          f"{len(faces)} faces found, {n} of the 24 labelled faces reconstructed in {seconds:.1f} s")
    print(f"mean distance same person {d_same:.3f} mm, different people {d_diff:.3f} mm, "
          f"ratio {d_same / d_diff:.3f}")
    print(f"identity_1nn_by_shape: {nn:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
