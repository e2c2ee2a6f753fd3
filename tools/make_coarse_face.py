"""Write the shipped coarse face area of the default reconstruction geometry.

Usage (from the repository root, with the ICT model installed)::

    .venv/bin/python tools/make_coarse_face.py

The photometric stage renders a coarser, mirror-symmetric triangulation of the face area
(:mod:`faceclip.fit.coarse_mesh`). It is worked out once per machine (about 3 s) and cached; this
script writes the default geometry's (ICT ``head_eyes``, ``FitConfig().photo_mesh_fraction``)
into ``src/faceclip/data/`` so that a fresh install starts without that pause. The file's name
is a hash of its inputs: a different model conversion or setting simply is not found there and
is computed as before. ``tests/test_coarse_mesh.py`` checks that the shipped file is the one this
script makes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "faceclip" / "data"


def main() -> None:
    from faceclip.facemodel import load_face_model
    from faceclip.fit.coarse_mesh import decimate_symmetric, shipped_file
    from faceclip.fit.stages import FaceForward, FitConfig
    from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY

    model = load_face_model("ict", geometry=RECONSTRUCTION_GEOMETRY)
    config = FitConfig()
    full = FaceForward.build(model, config.with_overrides(photo_mesh_fraction=1.0))
    args = (model.mean_mm.numpy(), full.render_tris.numpy(), full.albedo_model.mirror.numpy())
    # The repository's data folder, whichever faceclip is imported (never site-packages).
    path = DATA_DIR / shipped_file(*args, config.photo_mesh_fraction).name
    target = int(round(config.photo_mesh_fraction * len(np.unique(args[1]))))
    tris = decimate_symmetric(*args, target)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:  # np.savez adds no suffix to a file object
        np.savez_compressed(fh, triangles=tris.astype(np.int32))
    tmp.replace(path)
    print(f"{path}: {len(tris)} triangles over {len(np.unique(tris))} vertices")
    for old in sorted(DATA_DIR.glob("coarse_face_*.npz")):  # earlier versions of the default's
        if old != path:
            old.unlink()
            print(f"removed {old}")


if __name__ == "__main__":
    main()
