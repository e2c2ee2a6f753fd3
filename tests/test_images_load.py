"""Image loading: the bad-input corpus, generated here from the shared photos or synthetically.

Each case states the expected outcome: a (H, W, 3) uint8 RGB result with specific pixel
values, or an InputError whose message names the file and says what is wrong.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faceclip.errors import FaceClipError, InputError
from faceclip.io.images import as_rgb_uint8, list_image_files, load_image, read_image

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
ASTRONAUT = FACES / "astronaut.png"

needs_faces = pytest.mark.skipif(not ASTRONAUT.is_file(), reason="../shared/data/faces is not beside the repository")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (incomplete) pixel stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )


def small_rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """An asymmetric random RGB image (so flips and rotations are distinguishable)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    if not ASTRONAUT.is_file():
        pytest.skip("../shared/data/faces is not beside the repository")
    return np.asarray(Image.open(ASTRONAUT).convert("RGB"))


def expect_input_error(path: Path, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_image(path)
    text = str(info.value)
    assert str(path) in text, text
    for frag in fragments:
        assert frag in text.lower(), text
    assert "\n" not in info.value.message
    return info.value


# --------------------------------------------------------------------------- refused


def test_missing_file(tmp_path: Path) -> None:
    expect_input_error(tmp_path / "nope.jpg", "no such file")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    expect_input_error(tmp_path, "folder")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    expect_input_error(p, "empty", "0 bytes")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    err = expect_input_error(p, "not a recognised image")
    assert err.hint


def test_random_bytes_named_png(tmp_path: Path) -> None:
    p = tmp_path / "noise.png"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    expect_input_error(p, "not a recognised image")


def test_heic_gets_a_specific_hint(tmp_path: Path) -> None:
    p = tmp_path / "phone.heic"
    p.write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 100)
    err = expect_input_error(p)
    assert "pillow-heif" in (err.hint or "")


@needs_faces
def test_truncated_jpeg(tmp_path: Path, astronaut: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expect_input_error(p, "truncated")


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(small_rgb(200, 200)).save(buf, format="PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    expect_input_error(p, "truncated")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(20000, 20000))
    t0 = time.perf_counter()
    err = expect_input_error(p, "20000x20000", "megapixels")
    assert time.perf_counter() - t0 < 1.0
    assert "max_pixels" in (err.hint or "")


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    p = tmp_path / "small.png"
    Image.fromarray(small_rgb(40, 50)).save(p)
    with pytest.raises(InputError, match="40x50|50x40"):
        load_image(p, max_pixels=1000)
    saved = Image.MAX_IMAGE_PIXELS
    assert load_image(p, max_pixels=10**12).shape == (40, 50, 3)  # above Pillow's own guard
    assert load_image(p, max_pixels=None).shape == (40, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == saved  # Pillow's global limit is restored


def test_input_error_is_a_faceclip_error() -> None:
    assert issubclass(InputError, FaceClipError)


# --------------------------------------------------------------------------- decoded


@needs_faces
def test_plain_png_is_exact(astronaut: np.ndarray) -> None:
    img = read_image(ASTRONAUT)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (512, 512, 3)
    np.testing.assert_array_equal(img.rgb, astronaut)
    assert img.format == "PNG" and img.exif_orientation == 1 and not img.had_alpha


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_all_values(tmp_path: Path, orientation: int) -> None:
    upright = small_rgb(24, 32)
    # the stored pixels are the upright picture with the inverse of the tag's transform applied
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = Image.fromarray(upright)
    if inverse is not None:
        stored = stored.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    stored.save(p, exif=exif.tobytes())
    img = read_image(p)
    assert img.exif_orientation == orientation
    np.testing.assert_array_equal(img.rgb, upright)


@needs_faces
def test_exif_rotated_jpeg(tmp_path: Path, astronaut: np.ndarray) -> None:
    stored = Image.fromarray(astronaut[:, :400]).transpose(Image.Transpose.ROTATE_90)  # lying on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    p = tmp_path / "phone.jpg"
    stored.save(p, quality=95, exif=exif.tobytes())
    img = read_image(p)
    assert img.source_size == (512, 400)  # (width, height) as stored
    assert img.rgb.shape == (512, 400, 3)
    assert np.abs(img.rgb.astype(int) - astronaut[:, :400]).mean() < 3


@needs_faces
def test_grayscale_jpeg(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = tmp_path / "gray.jpg"
    Image.fromarray(astronaut).convert("L").save(p, quality=95)
    img = read_image(p)
    assert img.source_mode == "L" and img.rgb.shape == (512, 512, 3)
    assert np.array_equal(img.rgb[..., 0], img.rgb[..., 1]) and np.array_equal(img.rgb[..., 1], img.rgb[..., 2])


def test_one_bit_png(tmp_path: Path) -> None:
    bits = small_rgb()[..., 0] > 127
    p = tmp_path / "bw.png"
    Image.fromarray(bits).convert("1").save(p)
    rgb = load_image(p)
    np.testing.assert_array_equal(rgb[..., 0], np.where(bits, 255, 0))


@needs_faces
def test_cmyk_jpeg(tmp_path: Path, astronaut: np.ndarray) -> None:
    p = tmp_path / "print.jpg"
    Image.fromarray(astronaut).convert("CMYK").save(p, quality=95)
    img = read_image(p)
    assert img.source_mode == "CMYK" and img.rgb.shape == (512, 512, 3)
    assert np.abs(img.rgb.astype(int) - astronaut).mean() < 6


@needs_faces
def test_sixteen_bit_grayscale_png(tmp_path: Path, astronaut: np.ndarray) -> None:
    gray8 = np.asarray(Image.fromarray(astronaut).convert("L"))
    p = tmp_path / "gray16.png"
    Image.fromarray(gray8.astype(np.uint16) * 257).save(p)
    img = read_image(p)
    assert img.source_mode.startswith("I")
    assert np.abs(img.rgb[..., 0].astype(int) - gray8).max() <= 1  # scaled, not clipped to white


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    rgb16 = np.random.default_rng(2).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), rgb16[..., ::-1])
    rgb = load_image(p)
    assert np.abs(rgb.astype(int) - (rgb16 >> 8)).max() <= 1


def test_thirty_two_bit_and_float_tiff(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.int32)
    p = tmp_path / "i32.tif"
    Image.fromarray(ramp, mode="I").save(p)
    rgb = load_image(p)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    f = tmp_path / "f32.tif"
    Image.fromarray((ramp / 65535.0).astype(np.float32), mode="F").save(f)
    rgbf = load_image(f)
    assert rgbf[0, 0, 0] == 0 and rgbf[-1, -1, 0] == 255


@needs_faces
def test_palette_png(tmp_path: Path, astronaut: np.ndarray) -> None:
    pal = Image.fromarray(astronaut).quantize(colors=256)
    p = tmp_path / "pal.png"
    pal.save(p)
    img = read_image(p)
    assert img.source_mode == "P" and not img.had_alpha
    np.testing.assert_array_equal(img.rgb, np.asarray(pal.convert("RGB")))


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    idx = np.zeros((10, 12), np.uint8)
    idx[:, 6:] = 1
    im = Image.fromarray(idx, mode="P")
    im.putpalette([200, 10, 10, 0, 0, 255] + [0] * 762)
    p = tmp_path / "palt.png"
    im.save(p, transparency=1)
    img = read_image(p, background=(0, 255, 0))
    assert img.had_alpha
    assert tuple(img.rgb[0, 0]) == (200, 10, 10) and tuple(img.rgb[0, 11]) == (0, 255, 0)


def test_rgba_png_is_composited(tmp_path: Path) -> None:
    rgb = small_rgb(16, 16)
    alpha = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(p)
    img = read_image(p)  # default background white
    a = alpha[..., None] / 255.0
    expected = rgb * a + 255 * (1 - a)
    assert img.had_alpha and img.source_mode == "RGBA"
    assert np.abs(img.rgb - expected).max() <= 1.0
    np.testing.assert_array_equal(img.rgb[:, -1], rgb[:, -1])  # opaque column untouched
    black = load_image(p, background=(0, 0, 0))
    assert black[:, 0].max() == 0  # fully transparent column -> background


def test_grayscale_with_alpha(tmp_path: Path) -> None:
    la = np.dstack([np.full((8, 8), 100, np.uint8), np.full((8, 8), 0, np.uint8)])
    p = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(p)
    assert load_image(p, background=(10, 20, 30))[0, 0].tolist() == [10, 20, 30]


def test_multiframe_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    img = read_image(p)
    assert img.n_frames == 2
    assert tuple(img.rgb[0, 0]) == (255, 0, 0)


def test_webp(tmp_path: Path) -> None:
    p = tmp_path / "x.webp"
    Image.fromarray(small_rgb()).save(p, lossless=True)
    np.testing.assert_array_equal(load_image(p), small_rgb())


# --------------------------------------------------------------------------- arrays, folders


def test_as_rgb_uint8_layouts() -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb_uint8(g).shape == (3, 4, 3)
    assert as_rgb_uint8(g[..., None]).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert as_rgb_uint8(rgba).shape == (3, 4, 3)
    assert as_rgb_uint8(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    assert as_rgb_uint8(np.full((2, 2, 3), 0.5, np.float32))[0, 0, 0] == 128
    x = np.zeros((5, 5, 3), np.uint8)
    assert as_rgb_uint8(x) is x  # no copy when already in form


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4,), np.uint8),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4, 3), np.int64),
    ],
)
def test_as_rgb_uint8_refuses(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        as_rgb_uint8(bad)


def test_list_image_files_expands_folders(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    other = tmp_path / "sub" / "c.weird"
    other.parent.mkdir()
    other.write_bytes(b"x")
    found = list_image_files([tmp_path, other])
    assert [p.name for p in found] == ["a.PNG", "b.jpg", "c.weird"]


def test_encoders_png_lossless_and_jpeg_close() -> None:
    """encode_png round-trips exactly (noise and a smooth ramp, odd sizes); encode_jpeg stays
    within a few levels on a smooth image; both refuse what is not (H, W, 3) uint8."""
    from faceclip.io.images import encode_jpeg, encode_png

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:67, 0:93]
    smooth = np.stack([xx * 2, yy * 3, (xx + yy) % 256], -1).astype(np.uint8)
    noise = rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)
    for img in (smooth, noise):
        back = np.asarray(Image.open(io.BytesIO(encode_png(img))).convert("RGB"))
        assert np.array_equal(back, img)
    back = np.asarray(Image.open(io.BytesIO(encode_jpeg(smooth))).convert("RGB")).astype(float)
    assert back.shape == smooth.shape and np.abs(back - smooth).mean() < 3.0
    for bad in (smooth.astype(np.float32), smooth[..., 0]):
        with pytest.raises(ValueError):
            encode_png(bad)
        with pytest.raises(ValueError):
            encode_jpeg(bad)
