"""docs/make_figures.py: the README/docs pictures come out complete and plausible.

Runs the script's ``main(["--fast", "--out", tmp])`` once (a fast reconstruction of the bundled
photo, ~15 s) and checks each picture: size and aspect, not blank, the photo and UV panels hold
what they claim, and the shaded heads are centred, left-right consistent and lit from the
upper left as the script says.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

SCRIPT = REPO / "docs" / "make_figures.py"
EXPECTED = ("astronaut.png", "astronaut_shaded.png", "astronaut_texture.png")


def load_script():
    spec = importlib.util.spec_from_file_location("docs_make_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(ict_cache, tmp_path_factory):
    mf = load_script()
    out = tmp_path_factory.mktemp("figures")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = mf.main(["--fast", "--out", str(out)])
    assert code == 0
    return mf, out, stdout.getvalue()


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def foreground(img: np.ndarray) -> np.ndarray:
    """Pixels that are not the white background."""
    return img.min(axis=2) < 235


def column_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of columns holding foreground pixels."""
    cols = np.concatenate([[False], mask.any(axis=0), [False]])
    edges = np.flatnonzero(np.diff(cols.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2]))


def mirror_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of mask ``a`` and the left-right mirror of ``b`` (same height; both start at their
    left edge, the narrower width is compared)."""
    w = min(a.shape[1], b.shape[1])
    a, b = a[:, :w], b[:, ::-1][:, :w]
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_prints_every_file(figures):
    _, out, printed = figures
    for name in EXPECTED:
        assert (out / name).is_file()
        assert str(out / name) in printed


def test_main_figure_layout_and_panels(figures):
    mf, out, _ = figures
    path = out / "astronaut.png"
    assert path.stat().st_size < 1.5e6
    img = rgb(path)
    h, w = img.shape[:2]
    assert 1800 <= w <= 2000 and w > 5 * h  # one row
    assert img.std() > 40
    top = mf.panel_top(mf.FONT_PX, grouped=True)
    H = h - top - mf.MARGIN_PX  # every panel's height
    assert H > 180
    # first panel: the input photo, whole
    photo = np.asarray(Image.open(mf.EXAMPLE).convert("RGB").resize((H, H), Image.Resampling.LANCZOS), float)
    m = mf.MARGIN_PX
    assert np.abs(img[top:top + H, m:m + H] - photo).mean() < 6
    # last panel: the UV texture map (the same texture as the thumbnail)
    thumb = np.asarray(Image.open(out / "astronaut_texture.png").resize((H, H), Image.Resampling.LANCZOS), float)
    assert np.abs(img[top:top + H, w - m - H:w - m] - thumb).mean() < 8
    # between the overlay crop and the UV map: six views, three grey then three in colour
    x0, x1 = m + 2 * (H + mf.GAP_PX), w - m - H - mf.GAP_PX
    views = img[top:top + H, x0:x1]
    runs = column_runs(foreground(views))
    assert len(runs) == 6, runs
    for k, (a, b) in enumerate(runs):
        assert 0.4 * H < b - a < 1.2 * H
        part = views[:, a:b][foreground(views[:, a:b])]
        saturation = (part.max(1) - part.min(1)).mean()
        assert (saturation < 12) if k < 3 else (saturation > 25), (k, saturation)


def test_shaded_views_centred_symmetric_and_lit(figures):
    mf, out, _ = figures
    img = rgb(out / "astronaut_shaded.png")
    top = mf.panel_top(mf.FONT_PX + 2, grouped=False)
    assert img.shape[0] == top + mf.SHADED_HEIGHT_PX + mf.MARGIN_PX
    views = img[top:top + mf.SHADED_HEIGHT_PX]
    fg = foreground(views)
    runs = column_runs(fg)
    assert len(runs) == 3, runs  # front, from the left, from the right
    masks = []
    for a, b in runs:
        mask = fg[:, a:b]
        masks.append(mask)
        ys, xs = np.nonzero(mask)
        assert 0.3 < mask.mean() < 0.9  # a head, not a speck or a filled box
        assert abs(xs.mean() / (b - a) - 0.5) < 0.12  # roughly centred
        assert 0.35 < ys.mean() / mask.shape[0] < 0.65
        grey = views[:, a:b][mask]
        assert grey.std() > 8 and 90 < grey.mean() < 230  # shaded, not flat
        assert np.abs(grey[:, 0] - grey[:, 2]).mean() < 12  # grey
    front = masks[0]
    assert mirror_iou(front, front) > 0.9  # the front view is left-right symmetric
    assert mirror_iou(masks[1], masks[2]) > 0.95  # the two turned views mirror each other
    # the key light comes from the upper left: the left half of the front face is brighter
    a, b = runs[0]
    face = views[: mf.SHADED_HEIGHT_PX * 2 // 3, a:b].mean(axis=2)
    fmask = front[: mf.SHADED_HEIGHT_PX * 2 // 3]
    half = face.shape[1] // 2
    assert face[:, :half][fmask[:, :half]].mean() > face[:, half:][fmask[:, half:]].mean() + 5


def test_texture_thumbnail(figures):
    mf, out, _ = figures
    tex = rgb(out / "astronaut_texture.png")
    assert tex.shape == (mf.TEXTURE_THUMB_PX, mf.TEXTURE_THUMB_PX, 3)
    assert tex.std() > 25


def test_missing_face_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    mf = load_script()
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path / "home"))
    assert mf.main(["--fast", "--out", str(tmp_path / "out")]) == 2
    assert "faceclip models install ict" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
