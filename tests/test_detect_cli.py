"""``faceclip landmarks``: JSON format, overlays, batches with bad files, atomic outputs."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceclip.cli import main
from faceclip.detect import report
from faceclip.detect.report import plan_landmark_outputs, write_json_atomic
from faceclip.errors import InputError

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
ASTRONAUT = FACES / "astronaut.png"
DOGS = FACES / "dogs.jpg"

pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not beside the repository")


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bad and awkward inputs, generated from the shared photos."""
    d = tmp_path_factory.mktemp("corpus")
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    files: dict[str, Path] = {}
    files["empty"] = d / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = d / "readme.jpg"
    files["text"].write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    files["truncated"] = d / "truncated.jpg"
    files["truncated"].write_bytes(buf.getvalue()[:5000])
    files["bomb"] = d / "bomb.png"
    files["bomb"].write_bytes(bomb_png(20000, 20000))
    files["rgba"] = d / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(files["rgba"])
    files["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"], quality=92)
    files["gray16"] = d / "gray16.png"
    Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257).save(files["gray16"])
    files["rotated"] = d / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise to display"
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_270).save(files["rotated"], quality=92, exif=exif.tobytes())
    return files


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_single_image_json_and_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "astro.json"
    rc, out, err = run(
        ["landmarks", str(ASTRONAUT), "--json", str(out_json), "--overlay", str(tmp_path / "ov")], capsys
    )
    assert rc == 0, err
    rec = json.loads(out_json.read_text())
    assert set(rec) == {"image", "width", "height", "faces"}
    assert rec["image"] == str(ASTRONAUT) and (rec["width"], rec["height"]) == (512, 512)
    assert len(rec["faces"]) >= 1
    face = rec["faces"][0]
    assert set(face) == {"box", "score", "detector", "landmarks68", "landmarks478"}
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    lm = np.array(face["landmarks68"])
    assert lm.shape == (68, 2) and np.array(face["landmarks478"]).shape == (478, 3)
    assert (lm[:, 0] > x0 - 20).all() and (lm[:, 0] < x1 + 20).all()
    overlay = np.asarray(Image.open(tmp_path / "ov" / "astronaut_landmarks.png"))
    assert overlay.shape == (512, 512, 3)
    assert (overlay != np.asarray(Image.open(ASTRONAUT).convert("RGB"))).any(axis=2).sum() > 500
    assert f"wrote {out_json}" in out


def test_stdout_json_lines_without_json_option(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["landmarks", str(ASTRONAUT), str(DOGS), "--quiet"], capsys)
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["astronaut.png", "dogs.jpg"]
    assert records[1]["faces"] == []
    assert "dogs.jpg: no face found" in err


@pytest.mark.parametrize("kind", ["rgba", "cmyk", "gray16", "rotated"])
def test_awkward_but_valid_images_give_a_face(
    kind: str, corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(["landmarks", str(corpus[kind]), "--quiet"], capsys)
    assert rc == 0, err
    rec = json.loads(out)
    assert len(rec["faces"]) >= 1
    assert (rec["width"], rec["height"]) == (512, 512)
    x0, y0, x1, y1 = rec["faces"][0]["box"]
    assert 150 < (x0 + x1) / 2 < 300 and 80 < (y0 + y1) / 2 < 180  # upright, where her face is


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "the file is empty"),
        ("text", "not a recognised image format"),
        ("truncated", "truncated or corrupt"),
        ("bomb", "above the limit"),
    ],
)
def test_bad_file_alone(
    kind: str, message: str, corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "x.json"
    rc, out, err = run(["landmarks", str(corpus[kind]), "--json", str(out_json), "--overlay", str(tmp_path)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(corpus[kind]) in lines[0]
    assert message in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temp files


def test_batch_with_bad_files_keeps_going(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    inputs = [corpus["empty"], ASTRONAUT, corpus["text"], corpus["truncated"], DOGS, corpus["bomb"], corpus["rgba"]]
    rc, out, err = run(["landmarks", *map(str, inputs), "--json", str(out_dir), "--overlay", str(out_dir)], capsys)
    assert rc == 2
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [
        "astronaut.json",
        "astronaut_landmarks.png",
        "dogs.json",
        "dogs_landmarks.png",
        "rgba.json",
        "rgba_landmarks.png",
    ]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4
    for bad in ("empty", "text", "truncated", "bomb"):
        assert sum(str(corpus[bad]) in line for line in errors) == 1
    assert "7 images" in err and "4 failed" in err
    assert "Traceback" not in err
    assert len(json.loads((out_dir / "astronaut.json").read_text())["faces"]) >= 1


def test_single_json_file_for_many_images_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["landmarks", str(ASTRONAUT), str(DOGS), "--json", str(tmp_path / "all.json")], capsys)
    assert rc == 2 and "folder" in err and not (tmp_path / "all.json").exists()


def test_folder_input_and_duplicate_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png"
    plan = plan_landmark_outputs([a, b, tmp_path / "x-2.jpg"], tmp_path / "out", tmp_path / "ov")
    assert [p[0].name for p in plan] == ["x.json", "x-2.json", "x-2-2.json"]
    assert [p[1].name for p in plan] == ["x_landmarks.png", "x-2_landmarks.png", "x-2-2_landmarks.png"]
    with pytest.raises(InputError):
        plan_landmark_outputs([a, b], tmp_path / "one.json", None)
    with pytest.raises(InputError, match="overwrite an input"):
        plan_landmark_outputs([tmp_path / "x.json"], tmp_path, None)


def test_unexpected_error_is_per_file_and_debug_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    real = report.detect_and_landmark

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "detect_and_landmark", flaky)
    rc, out, err = run(["landmarks", str(DOGS), str(ASTRONAUT), "--json", str(tmp_path)], capsys)
    assert rc == 2
    assert f"error: {DOGS}: RuntimeError: boom" in err and "Traceback" not in err
    assert (tmp_path / "astronaut.json").exists() and not (tmp_path / "dogs.json").exists()
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        main(["--debug", "landmarks", str(DOGS), "--json", str(tmp_path / "d")])


def test_atomic_write_leaves_no_partial_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json_atomic(target, {"v": 1})

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_json_atomic(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"v": object()})  # not serialisable
    assert not (tmp_path / "bad.json").exists()
