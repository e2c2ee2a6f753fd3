"""Regenerate docs/images/detail.jpg: photos, their coarse fit and the fit with --detail, shaded
without texture (grey clay, one frontal light) so the geometry's detail shows.

Run from the repository root: ``.venv/bin/python docs/make_detail_figures.py [--out FILE] PHOTO...``
(default: the astronaut and two faces of bald_guys.jpg from ../shared/data/faces).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def shaded_pair(folder: Path, model, size: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo crop, coarse clay, detailed clay) of one result folder, each (size, size, 3) uint8."""
    import cv2

    from faceclip.evaluate.synthetic_detail import render_with_detail
    from faceclip.fit.texture import face_window, window_camera
    from faceclip.io.detail import read_displacement_png
    from faceclip.io.images import load_image
    from faceclip.render import PerspectiveCamera

    params = json.loads((folder / "params.json").read_text())
    photo = load_image(params["image"])
    c = params["camera"]
    R = torch.tensor(params["rotation"]["camera_matrix_R"], dtype=torch.float32)
    cam = PerspectiveCamera.create(R[None], torch.tensor(params["translation_mm"], dtype=torch.float32)[None],
                                   torch.tensor([[c["fx_px"], c["fy_px"]]]), tuple(c["image_size_hw"]),
                                   principal_point_px=torch.tensor([[c["cx_px"], c["cy_px"]]]))
    verts = _read_obj_vertices(folder / "mesh.obj", model.n_vertices)
    from faceclip.fit.detail import skin_triangle_mask

    face_ids = torch.unique(model.triangles[skin_triangle_mask(model)])
    win = face_window(cam, verts[None][:, face_ids], tuple(photo.shape[:2]), max_side_px=size, margin_px=16)
    wc = window_camera(cam, win)
    d = params["detail"]
    atlas = read_displacement_png(folder / d["file"], d["scale_mm"], d["offset_mm"])
    from faceclip.render.shading import sh_directional

    sh = sh_directional((0.35, 0.45, 1.0), ambient=0.45, diffuse=0.55)[0]  # from above, a little to the side
    grey = torch.full((model.n_vertices, 3), 0.85)
    coarse, cov = render_with_detail(model, verts, grey, sh, wc, None, np.full((*wc.image_size, 3), 1.0))
    detail, _ = render_with_detail(model, verts, grey, sh, wc, torch.from_numpy(atlas.astype(np.float32))[None, None],
                                   np.full((*wc.image_size, 3), 1.0))
    region = photo[win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
    region = cv2.resize(region, (wc.image_size[1], wc.image_size[0]), interpolation=cv2.INTER_AREA)
    to8 = lambda x: (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    out = [region, to8(coarse), to8(detail)]
    return tuple(cv2.resize(o, (size, size), interpolation=cv2.INTER_AREA) for o in out)


def _read_obj_vertices(path: Path, n: int) -> torch.Tensor:
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    return torch.tensor(np.array(rows[:n], dtype=np.float32))


def main() -> None:
    from PIL import Image

    from faceclip.reconstruction import ReconstructOptions, Reconstructor, working_copy
    from faceclip.io.images import load_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="*")
    ap.add_argument("--out", default=str(Path(__file__).parent / "images" / "detail.jpg"))
    ap.add_argument("--faces", default="0,1", help="comma-separated face indices per photo (largest first)")
    args = ap.parse_args()
    photos = args.photos or [str(SHARED / "astronaut.png"), str(SHARED / "bald_guys.jpg")]
    rec = Reconstructor(ReconstructOptions(detail=True, all_faces=True))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo in photos:
            n = len(rec.detect(working_copy(load_image(photo))[0], photo))
            faces = [int(k) for k in args.faces.split(",") if int(k) < n]
            outs = rec.reconstruct_image(Path(photo), Path(tmp), faces=faces)
            for o in outs:
                rows.append(np.concatenate(shaded_pair(o.folder, rec.model), 1))
    Image.fromarray(np.concatenate(rows, 0)).save(args.out, **({"quality": 88} if args.out.endswith(".jpg") else {}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
