"""Metrics and benchmark protocols: REALY, FaceScape, NoW, MICC Florence, 2D NME, and a
synthetic benchmark with known ground truth.

- :mod:`~faceclip.evaluate.realy`, :mod:`~faceclip.evaluate.now`, :mod:`~faceclip.evaluate.micc`,
  :mod:`~faceclip.evaluate.facescape`: one function per protocol on in-memory meshes
  (:class:`~faceclip.evaluate.mesh.Mesh`), each module documenting where it follows and where it
  deviates from the official evaluation code.
- :mod:`~faceclip.evaluate.nme`: 68-landmark normalised mean error.
- :mod:`~faceclip.evaluate.runner`: protocols on files and on each benchmark's folder layout
  (``faceclip evaluate``).
- :mod:`~faceclip.evaluate.synthetic`: the synthetic face generator (also a training data source).
- :mod:`~faceclip.evaluate.benchmark`: the synthetic benchmark and its method registry
  (``faceclip benchmark synthetic``).
- :mod:`~faceclip.evaluate.geometry`, :mod:`~faceclip.evaluate.nicp`: closest points, similarity
  fits, ICP, non-rigid ICP.

Everything is millimetres unless a function says otherwise.
"""

from faceclip.evaluate.facescape import FaceScapeResult, facescape_evaluate
from faceclip.evaluate.mesh import Mesh, load_keypoints, load_mesh
from faceclip.evaluate.micc import MiccResult, micc_evaluate
from faceclip.evaluate.nme import nme
from faceclip.evaluate.now import NowResult, now_evaluate
from faceclip.evaluate.realy import RealyGroundTruth, RealyResult, realy_evaluate, realy_ground_truth_from_mesh

__all__ = [
    "FaceScapeResult", "Mesh", "MiccResult", "NowResult", "RealyGroundTruth", "RealyResult",
    "facescape_evaluate", "load_keypoints", "load_mesh", "micc_evaluate", "nme", "now_evaluate",
    "realy_evaluate", "realy_ground_truth_from_mesh",
]
