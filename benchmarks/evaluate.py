"""Speed of the REALY-style evaluation: one ~35k-vertex prediction against a ~40k-vertex ground truth.

Usage:  .venv/bin/python benchmarks/evaluate.py [--runs 3]
Needs `faceclip models install ict` first.

The meshes are built from ICT-FaceKit, never from each other's topology:

- ground truth: a random identity with an expression on the ``head`` geometry (11,248 vertices),
  midpoint-subdivided once (about 45k vertices, denser than the brief's 40k), with REALY-style
  regions (:func:`faceclip.evaluate.keypoints.realy_regions_for_model`) carried over to the
  subdivided mesh (a midpoint belongs to a region when both ends do);
- prediction: the mean face on the ``face`` geometry (9,409 vertices) subdivided once (37,280
  vertices), rotated, scaled and moved.

Prints the per-run times, the NMSE per region and ends with ``realy_eval_s_35k_40k: X`` (the
median wall time of :func:`faceclip.evaluate.realy.realy_evaluate`, meshes already in memory).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def build_meshes(seed: int = 0):
    """Return (pred Mesh, pred keypoints (68, 3), RealyGroundTruth)."""
    import torch

    from faceclip.evaluate.keypoints import realy_regions_for_model
    from faceclip.evaluate.mesh import Mesh
    from faceclip.evaluate.realy import realy_ground_truth_from_mesh
    from faceclip.facemodel import load_face_model

    head = load_face_model("ict", geometry="head")
    face = load_face_model("ict", geometry="face")
    g = torch.Generator().manual_seed(seed)
    expr = torch.zeros(1, head.n_expression)
    expr[0, head.expression_index("jawOpen")] = 0.3
    expr[0, head.expression_index("mouthSmile_L")] = 0.5
    gt_v = head(identity=torch.randn(1, head.n_identity, generator=g), expression=expr).vertices_mm[0].double().numpy()
    gt_base = Mesh(gt_v, head.triangles.numpy())
    gt_mesh = gt_base.subdivided()
    edges = gt_base.edges()
    regions = {}
    for name, idx in realy_regions_for_model(head).items():
        inside = np.zeros(gt_base.n_vertices, bool)
        inside[idx] = True
        mids = np.nonzero(inside[edges[:, 0]] & inside[edges[:, 1]])[0] + gt_base.n_vertices
        regions[name] = np.concatenate([idx, mids])
    lm = head.landmarks68.numpy()
    gt = realy_ground_truth_from_mesh(gt_mesh, regions, gt_v[lm])

    pred_base = Mesh(face.mean_mm.double().numpy(), face.triangles.numpy())
    pred = pred_base.subdivided()
    a = np.deg2rad(25.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pred = pred.transformed(1.12, rot, np.array([3.0, -40.0, 700.0]))
    pred_kp = pred.vertices[face.landmarks68.numpy()]  # original vertices keep their indices
    return pred, pred_kp, gt, gt_mesh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from faceclip.evaluate.realy import realy_evaluate

    pred, pred_kp, gt, gt_mesh = build_meshes()
    n_region = {k: v.n_vertices for k, v in gt.regions.items()}
    print(f"prediction: {pred.n_vertices} vertices; ground truth: {gt_mesh.n_vertices} vertices; regions: {n_region}")
    times = []
    result = None
    for i in range(args.runs):
        t = time.perf_counter()
        result = realy_evaluate(pred, pred_kp, gt)
        times.append(time.perf_counter() - t)
        print(f"run {i + 1}: {times[-1]:.2f} s")
    assert result is not None
    print("nmse (mm): " + ", ".join(f"{k} {v:.3f}" for k, v in result.nmse_mm.items()) + f", all {result.all_mm:.3f}")
    print(f"realy_eval_s_35k_40k: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
