"""Make the expression-editing contact sheet (docs/editing.md, the README).

``editing_contact_sheet.png``: one row per photo: the photo, the reconstruction as fitted, then
the named expressions of :mod:`faceclip.edit.expressions`, each rendered by the project's own
renderer (the photo's texture on the edited mesh, over the photo), in one square crop per row.

Usage::

    .venv/bin/python docs/make_editing_figures.py [--photos A.jpg B.jpg ...] [--out docs/images]

Default photos: ``examples/astronaut.png`` and, when ``../shared/data/faces`` is beside the
checkout, two of dlib's example photos (PASCAL VOC). Each is reconstructed with the default
settings into a temporary folder first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "data" / "faces"
COLUMNS = ("happy", "sad", "surprise", "anger", "disgust", "wink_left", "jaw_open", "pout")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", nargs="*", default=None)
    ap.add_argument("--out", default=str(REPO / "docs" / "images"))
    ap.add_argument("--size", type=int, default=192, help="side of each panel")
    args = ap.parse_args()

    from faceclip.cli import main as cli
    from faceclip.edit.expressions import ExpressionEdit, apply_expression
    from faceclip.edit.render import FaceRenderer, crop_photo, label
    from faceclip.edit.result import load_result

    photos = [Path(p) for p in args.photos] if args.photos else [REPO / "examples" / "astronaut.png"] + [
        p for p in (SHARED_FACES / "2008_001009.jpg", SHARED_FACES / "2007_007763.jpg") if p.is_file()]
    work = Path(tempfile.mkdtemp(prefix="faceclip-edit-fig-"))
    assert cli(["reconstruct", *map(str, photos), "--out", str(work), "--quiet"]) == 0
    rows = []
    for photo in photos:
        face = load_result(work / photo.stem)
        renderer = FaceRenderer(face)
        names = face.expression_names
        edits = [torch.tensor([apply_expression(face.expression[0].tolist(), names, ExpressionEdit(c))])
                 for c in COLUMNS]
        win = renderer.square_window(args.size, torch.cat([face.expression, *edits]))
        panels = [label(crop_photo(face.photo, win), "photo"), label(renderer.crop(face.expression, win), "fit")]
        panels += [label(renderer.crop(e, win), c) for c, e in zip(COLUMNS, edits)]
        rows.append(np.concatenate(panels, axis=1))
    out = Path(args.out) / "editing_contact_sheet.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
