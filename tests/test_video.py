"""Video: clip I/O, smoothing, the sequence fitter, and `faceclip video` end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FACES_DIR

av = pytest.importorskip("av")


# ---------------------------------------------------------------------- clip I/O


def _gradient_frames(n: int, w: int = 64, h: int = 48) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 4 + 8 * i) % 256, (yy * 5) % 256, np.full_like(xx, 40 + 10 * i)], -1).astype(np.uint8)
            for i in range(n)]


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".mov"])
def test_write_then_read_round_trip(tmp_path, suffix):
    from faceclip.io.video import iter_frames, probe_video, write_frames

    frames = _gradient_frames(6)
    path = write_frames(tmp_path / f"clip{suffix}", frames, fps=12.0)
    info = probe_video(path)
    assert (info.kind, info.width, info.height, info.has_audio) == ("video", 64, 48, False)
    assert info.fps == pytest.approx(12.0, rel=1e-3)
    got = list(iter_frames(info))
    assert [i for i, _, _ in got] == list(range(6))
    assert np.allclose([t for _, t, _ in got], np.arange(6) / 12.0, atol=1e-3)
    for (_, _, rgb), ref in zip(got, frames):
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(float) - ref).mean() < 12.0  # lossy, but the same picture


def test_writer_is_atomic_and_pads_odd_sizes(tmp_path):
    from faceclip.io.video import VideoWriter, iter_frames, probe_video

    target = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 10) as w:
            w.write(_gradient_frames(1)[0])
            raise RuntimeError("stop")
    assert not target.exists() and not list(tmp_path.iterdir())  # no half-written file, no temporary
    odd = [f[:47, :63] for f in _gradient_frames(3)]
    with VideoWriter(tmp_path / "odd.mp4", 10) as w:
        for f in odd:
            w.write(f)
        with pytest.raises(ValueError, match="after frames of"):
            w.write(_gradient_frames(1)[0])
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height) == (64, 48) and len(list(iter_frames(info))) == 3


def test_writer_keeps_time_stamps_and_never_replaces_a_file_by_a_failed_one(tmp_path):
    from faceclip.errors import FaceClipError
    from faceclip.io.video import VideoWriter, iter_frames, probe_video, write_frames

    times = [0.5, 0.533, 0.6, 0.7, 0.733, 1.0]  # a variable frame rate, starting at 0.5 s
    with VideoWriter(tmp_path / "vfr.mp4", 30) as w:
        for f, t in zip(_gradient_frames(6), times):
            w.write(f, time_s=t)
    got = [t for _, t, _ in iter_frames(probe_video(tmp_path / "vfr.mp4"))]
    assert np.allclose(got, np.array(times) - 0.5, atol=2e-3)
    keep = tmp_path / "keep.mp4"
    keep.write_bytes(b"the user's file")
    with pytest.raises(FaceClipError, match="no frames"):
        write_frames(keep, [], 30)
    assert keep.read_bytes() == b"the user's file" and sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.mp4", "vfr.mp4"]


def _clip_with_audio(path: Path, n_frames: int = 10, fps: int = 10) -> Path:
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    aus = out.add_stream("aac", rate=16000)
    for f in _gradient_frames(n_frames):
        for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            out.mux(p)
    t = np.arange(16000 * n_frames // fps) / 16000.0
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    for k in range(0, samples.shape[1], 1024):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 1024]), format="fltp", layout="mono")
        af.sample_rate = 16000
        for p in aus.encode(af):
            out.mux(p)
    for s in (vs, aus):
        for p in s.encode(None):
            out.mux(p)
    out.close()
    return path


def test_audio_is_copied(tmp_path):
    from faceclip.io.video import VideoWriter, probe_video, write_frames

    src = _clip_with_audio(tmp_path / "talk.mp4")
    assert probe_video(src).has_audio
    out = write_frames(tmp_path / "copy.mp4", _gradient_frames(10), 10, audio_from=src)
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1
        n_audio = sum(1 for _ in c.demux(c.streams.audio[0]))
    assert n_audio > 5
    # Video cut short and starting later: the audio is shifted and cut alike.
    with VideoWriter(tmp_path / "cut.mp4", 10, audio_from=src) as w:
        for k, f in enumerate(_gradient_frames(4)):
            w.write(f, time_s=0.3 + k / 10)
        w.max_time_s = 0.7
    with av.open(str(tmp_path / "cut.mp4")) as c:
        a = c.streams.audio[0]
        ts = [float(p.pts * a.time_base) for p in c.demux(a) if p.pts is not None]
    assert min(ts) >= -1e-6 and max(ts) <= 0.45


def test_probe_errors(tmp_path):
    from faceclip.errors import InputError
    from faceclip.io.video import probe_video

    with pytest.raises(InputError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(InputError, match="not a readable video"):
        probe_video(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image frames"):
        probe_video(tmp_path / "empty")
    with pytest.raises(InputError, match="positive"):
        probe_video(junk, fps=0)


def test_frame_folder_order_and_sizes(tmp_path):
    from PIL import Image

    from faceclip.errors import InputError
    from faceclip.io.video import iter_frames, probe_video

    folder = tmp_path / "frames"
    folder.mkdir()
    frames = _gradient_frames(3)
    for name, f in zip(["f10.png", "f2.png", "f1.png"], [frames[2], frames[1], frames[0]]):
        Image.fromarray(f).save(folder / name)
    info = probe_video(folder, fps=5)
    assert info.kind == "frames" and [p.name for p in info.frame_files] == ["f1.png", "f2.png", "f10.png"]
    got = list(iter_frames(info))
    assert [t for _, t, _ in got] == [0.0, 0.2, 0.4]
    assert all(np.array_equal(a[2], b) for a, b in zip(got, frames))
    Image.fromarray(frames[0][:20]).save(folder / "f11.png")
    with pytest.raises(InputError, match="one size"):
        list(iter_frames(probe_video(folder)))


# ---------------------------------------------------------------------- smoothing


def test_one_euro_smooths_noise_without_lagging_a_ramp():
    from faceclip.video.smooth import OneEuroFilter, smooth_track

    rng = np.random.default_rng(0)
    t = np.arange(90) / 30.0
    still = 100 + rng.normal(0, 1.0, (90, 5, 2))
    out = smooth_track(still, t, np.ones(90), min_cutoff=1.0, beta=0.01)
    assert out[5:-5].std(0).mean() < 0.5 * still.std(0).mean()
    ramp = np.broadcast_to((200 * t)[:, None, None], (90, 5, 2)).copy()  # 200 px/s, no noise
    zero_phase = smooth_track(ramp, t, np.ones(90), min_cutoff=1.0, beta=0.0)
    f = OneEuroFilter(1.0, 0.0)
    causal = np.stack([f(ramp[i], 1 / 30.0 if i else 0.0) for i in range(90)])
    mid = slice(20, 70)
    lag_causal = np.abs(causal[mid] - ramp[mid]).mean()
    lag_zero = np.abs(zero_phase[mid] - ramp[mid]).mean()
    assert lag_causal > 5.0 and lag_zero < 0.05 * lag_causal
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0)


# ---------------------------------------------------------------------- sequence fitter


@pytest.fixture(scope="module")
def short_clip(ict_head):
    from faceclip.evaluate.synthetic_video import ClipConfig, make_synthetic_clip

    return make_synthetic_clip(3, 0, ClipConfig(n_frames=16, width=320, height=240, fps=15.0))


def test_synthetic_clip_ground_truth(short_clip):
    c = short_clip
    assert c.n_frames == 16 and c.frames[0].shape == (240, 320, 3)
    assert c.vertices_mm.shape[0] == 16 and c.expression.shape == (16, 53)
    assert np.ptp(c.angles_deg[:, 1]) > 20  # the head turns
    assert c.expression.max() > 0.25  # expressions come and go
    assert not np.array_equal(c.frames[0], c.frames[8])
    # The landmarks are the projections of the posed ground truth: inside the frame, on the face.
    lm = c.landmarks68_px
    assert (lm[..., 0] > 0).all() and (lm[..., 0] < 320).all() and (lm[..., 1] > 0).all() and (lm[..., 1] < 240).all()


def test_sequence_fitter_recovers_pose_and_identity(ict_head, short_clip):
    from faceclip.facemodel.params import MODEL_TO_OPENCV, matrix_to_euler
    from faceclip.fit.sequence import FrameCamera, SequenceFitter

    c = short_clip
    sf = SequenceFitter(ict_head)
    cam = FrameCamera(c.focal_px, 320, 240)
    gt_yaw = np.degrees(matrix_to_euler(torch.from_numpy(MODEL_TO_OPENCV @ c.rotation_cv)).numpy()[:, 1])
    keys = [0, 5, 10, 15]
    inits = [sf.initial_pose(c.landmarks68_px[k], cam) for k in keys]
    identity, poses = sf.fit_identity([c.landmarks68_px[k] for k in keys], cam, inits)
    from faceclip.evaluate.keypoints import realy_regions_for_model
    from faceclip.evaluate.mesh import Mesh
    from faceclip.evaluate.realy import realy_evaluate, realy_ground_truth_from_mesh

    tri, lm = ict_head.triangles.numpy(), ict_head.landmarks68.numpy()
    g = c.neutral_mm.astype(np.float64)
    gt = realy_ground_truth_from_mesh(Mesh(g, tri), realy_regions_for_model(ict_head), g[lm])

    def err(identity_):  # REALY-style shape error, mm
        v = sf.vertices(identity_, np.zeros(sf.n_exp))
        return realy_evaluate(Mesh(v, tri), v[lm], gt).all_mm

    mean_err, fit_err = err(np.zeros(sf.n_id)), err(identity)
    print("identity error (mm): mean face", mean_err, "fitted", fit_err)
    assert fit_err < 0.9 * mean_err  # exact landmarks from 4 views: closer than the mean face
    for k, p in zip(keys, poses):
        assert abs(np.degrees(p.angles_rad[1]) - gt_yaw[k]) < 4.0
    prev = None
    for k in range(c.n_frames):  # frame by frame, warm-started
        prev = sf.fit_frame(c.landmarks68_px[k], cam, identity, init=prev)
        assert abs(np.degrees(prev.angles_rad[1]) - gt_yaw[k]) < 4.0
        lm_pts = sf.vertices(identity, prev.expression)[ict_head.landmarks68.numpy()]
        assert np.linalg.norm(sf.project(lm_pts, prev, cam)[17:] - c.landmarks68_px[k][17:], axis=1).mean() < 2.5


def test_temporal_prior_pulls_toward_previous(ict_head, short_clip):
    from faceclip.fit.sequence import FrameCamera, SequenceConfig, SequenceFitter

    c = short_clip
    cam = FrameCamera(c.focal_px, 320, 240)
    free = SequenceFitter(ict_head)
    held = SequenceFitter(ict_head, SequenceConfig(w_temporal_rotation=1e6, w_temporal_translation=1e6))
    p0 = free.fit_frame(c.landmarks68_px[0], cam, np.zeros(free.n_id))
    p_free = free.fit_frame(c.landmarks68_px[8], cam, np.zeros(free.n_id), init=p0, prior=p0)
    p_held = held.fit_frame(c.landmarks68_px[8], cam, np.zeros(free.n_id), init=p0, prior=p0)
    assert abs(p_held.angles_rad[1] - p0.angles_rad[1]) < 0.01 < abs(p_free.angles_rad[1] - p0.angles_rad[1])


def test_video_metrics():
    from faceclip.evaluate.video_metrics import image_frame_vertices, posed_error, vertex_acceleration

    t = np.arange(10, dtype=float)
    X = np.zeros((10, 4, 3))
    X[..., 2] = 1000.0
    X[..., 0] = (5 * t)[:, None]  # uniform motion: no acceleration
    P = image_frame_vertices(X, 1000.0, (50, 50))
    assert vertex_acceleration(P) == pytest.approx(0.0, abs=1e-9)
    X2 = X.copy()
    X2[::2, :, 0] += 1.0  # a 1 mm zig-zag at 1 m: +-1 px around the path, |1 - 2 (0) + 1| = 2 px / frame^2
    assert vertex_acceleration(image_frame_vertices(X2, 1000.0, (50, 50))) == pytest.approx(2.0)
    assert posed_error(P, P) == 0.0
    with pytest.raises(ValueError):
        vertex_acceleration(P[:2])


# ---------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def video_rec(ict_head):
    from faceclip.video import VideoOptions, VideoReconstructor

    return VideoReconstructor(VideoOptions())


def test_synthetic_clip_end_to_end(tmp_path, short_clip, video_rec, ict_head):
    import trimesh

    from faceclip.evaluate.synthetic_video import write_clip_video
    from faceclip.facemodel.params import MODEL_TO_OPENCV, matrix_to_euler
    from faceclip.io.gltf import read_morph_glb
    from faceclip.io.video import iter_frames, probe_video
    from faceclip.video import VideoOptions, reconstruct_video

    clip = write_clip_video(short_clip, tmp_path / "synth.mp4")
    opts = VideoOptions(meshes=True)
    rep = reconstruct_video(clip, tmp_path / "out", opts, reconstructor=video_rec)
    folder = tmp_path / "out" / "synth"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert names[:3] == ["animation.glb", "frame_000000.obj", "frame_000001.obj"]
    assert {"overlay.mp4", "tracks.jsonl"} <= set(names) and sum(n.endswith(".obj") for n in names) == 16
    # tracks.jsonl: header, one identity, one line per frame
    lines = [json.loads(x) for x in (folder / "tracks.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "clip" and lines[0]["n_frames"] == 16 and len(lines[0]["expression_names"]) == 53
    assert [x["type"] for x in lines[1:]] == ["identity"] + ["frame"] * 16
    assert len(lines[1]["identity"]) == ict_head.n_identity
    frames = lines[2:]
    assert [f["frame"] for f in frames] == list(range(16))
    assert np.allclose([f["time_s"] for f in frames], np.arange(16) / 15.0, atol=1e-3)
    yaw = np.array([f["faces"][0]["angles_deg"][1] for f in frames])
    gt_yaw = np.degrees(matrix_to_euler(torch.from_numpy(MODEL_TO_OPENCV @ short_clip.rotation_cv)).numpy()[:, 1])
    assert np.abs(yaw - gt_yaw).mean() < 5.0
    lm = np.array([f["faces"][0]["landmarks68"] for f in frames])
    assert np.linalg.norm(lm - short_clip.landmarks68_px, axis=2).mean() < 4.0
    assert all(f["faces"][0]["observed"] for f in frames) and frames[0]["faces"][0]["detected"]
    # overlay.mp4: readable with the same reader, every frame, and the face drawn over it
    info = probe_video(folder / "overlay.mp4")
    ov = [f for _, _, f in iter_frames(info)]
    assert len(ov) == 16 and ov[0].shape == (240, 320, 3)
    assert np.abs(ov[4].astype(float) - short_clip.frames[4]).mean() > 2.0
    # animation.glb: trimesh opens it; morph targets and the animation are there
    scene = trimesh.load(folder / "animation.glb")
    assert sum(len(g.vertices) for g in scene.geometry.values()) > 1000
    glb = read_morph_glb(folder / "animation.glb")
    assert glb.targets.shape[0] == 53 and glb.frame_weights.shape == (16, 53)
    assert glb.frame_rotations_xyzw.shape == (16, 4) and glb.frame_translations.shape == (16, 3)
    assert np.allclose(glb.times_s, np.arange(16) / 15.0, atol=1e-3)
    assert glb.gltf["cameras"][0]["type"] == "perspective"
    # The GLB's pose is the tracked pose: the head's rotation of tracks.jsonl (model frame = glTF
    # frame, +Y up) and its translation with the camera's y and z axes flipped.
    from scipy.spatial.transform import Rotation

    from faceclip.facemodel.params import euler_matrix_np

    R = Rotation.from_quat(glb.frame_rotations_xyzw).as_matrix()
    for k, f in enumerate(frames):
        assert np.allclose(R[k], euler_matrix_np(*np.radians(f["faces"][0]["angles_deg"])), atol=1e-3)
        assert np.allclose(glb.frame_translations[k], np.array(f["faces"][0]["translation_mm"]) * [1, -1, -1],
                           atol=1e-2)
    # --meshes: posed in the glTF camera frame (in front of the camera: z < 0)
    v = trimesh.load(folder / "frame_000003.obj", process=False).vertices
    assert v[:, 2].max() < 0
    assert rep.interpolated_frames == [] and len(rep.tracks) == 1


def _pan_zoom_clip(photo: np.ndarray, n: int, size=(320, 240), zoom=(1.0, 1.25), blank: int | None = None):
    """A slow zoom and pan over a photo (what a phone pointed at a print would see)."""
    import cv2

    h, w = photo.shape[:2]
    frames = []
    for i in range(n):
        s = zoom[0] + (zoom[1] - zoom[0]) * i / max(n - 1, 1)
        cw, ch = w / s, h / s
        x0 = (w - cw) * (0.3 + 0.4 * i / max(n - 1, 1))
        y0 = (h - ch) * 0.5
        M = np.array([[size[0] / cw, 0, -x0 * size[0] / cw], [0, size[1] / ch, -y0 * size[1] / ch]])
        frames.append(cv2.warpAffine(photo, M, size, flags=cv2.INTER_AREA))
    if blank is not None:
        frames[blank] = np.full_like(frames[blank], 128)
    return frames


def test_reconstruct_video_defaults_and_reuse(tmp_path, short_clip, video_rec):
    from faceclip.evaluate.synthetic_video import write_clip_video
    from faceclip.video import reconstruct_video

    clip = write_clip_video(short_clip, tmp_path / "c.mp4")
    a = reconstruct_video(clip, tmp_path / "a", reconstructor=video_rec)  # the reconstructor's options
    b = reconstruct_video(clip, tmp_path / "b", None, reconstructor=video_rec, name="renamed")
    assert a.folder.name == "c" and b.folder.name == "renamed"
    assert np.allclose(a.tracks[0].identity, b.tracks[0].identity)
    assert video_rec.bad_frames == []  # per-job state is not left on the shared reconstructor


def test_real_photo_clip_with_a_failed_frame(tmp_path, video_rec):
    from PIL import Image

    from faceclip.io.video import write_frames
    from faceclip.video import reconstruct_video

    photo = np.asarray(Image.open(FACES_DIR / "astronaut.png").convert("RGB"))
    frames = _pan_zoom_clip(photo, 12, blank=6)
    clip = write_frames(tmp_path / "astronaut_pan.mp4", frames, 12)
    rep = reconstruct_video(clip, tmp_path / "out", video_rec.options, reconstructor=video_rec)
    assert rep.interpolated_frames == [6]
    tr = rep.tracks[0]
    assert len(tr.frames) == 12 and not tr.observed[6] and tr.observed[[0, 5, 7, 11]].all()
    # Frame 6 lies between its neighbours (interpolated, not a jump).
    mid = tr.landmarks68[6]
    assert np.linalg.norm(mid - 0.5 * (tr.landmarks68[5] + tr.landmarks68[7]), axis=1).mean() < 3.0
    # The face grows with the zoom.
    size = [np.ptp(lm[:, 0]) for lm in tr.landmarks68]
    assert size[-1] > 1.1 * size[0]
    assert (tr.reprojection_px[tr.observed] < 6.0).all()


def test_all_faces_are_tracked_apart(tmp_path, video_rec):
    from PIL import Image

    from faceclip.io.video import write_frames
    from faceclip.video import VideoOptions, reconstruct_video

    photo = np.asarray(Image.open(FACES_DIR / "bald_guys.jpg").convert("RGB"))
    frames = _pan_zoom_clip(photo, 6, size=(640, 426), zoom=(1.0, 1.05))
    clip = write_frames(tmp_path / "group.mp4", frames, 6)
    opts = VideoOptions(all_faces=True, overlay=False, n_keyframes=3)
    rep = reconstruct_video(clip, tmp_path / "out", opts, reconstructor=video_rec.__class__(opts))
    ids = sorted({t.track for t in rep.tracks})
    assert len(ids) >= 8  # the photo's faces (12 found); each followed through all 6 frames
    assert all(len(t.frames) == 6 and t.observed.all() for t in rep.tracks)
    # Tracks are kept apart: in every frame, the faces' landmark centres are far from each other.
    centres = {t.track: {int(f): lm.mean(0) for f, lm in zip(t.frames, t.landmarks68)} for t in rep.tracks}
    for f in range(6):
        pts = [c[f] for c in centres.values() if f in c]
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                assert np.linalg.norm(pts[i] - pts[j]) > 20
    folder = tmp_path / "out" / "group"
    assert {p.name for p in folder.glob("animation_face*.glb")} == {f"animation_face{k}.glb" for k in ids}
    assert not (folder / "overlay.mp4").exists()


# ---------------------------------------------------------------------- command line


def test_cli_video_errors_and_batch(tmp_path, short_clip, ict_cache, capsys):
    from faceclip.cli import main
    from faceclip.evaluate.synthetic_video import write_clip_video

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(2000))
    noface = tmp_path / "noface"
    noface.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 30 * i, np.uint8)).save(noface / f"{i}.png")
    good = write_clip_video(short_clip, tmp_path / "good.mp4")
    code = main(["video", str(junk), str(noface), str(good), str(tmp_path / "missing.mov"),
                 "--out", str(tmp_path / "res"), "--quiet", "--no-glb"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 3
    assert any("not a readable video" in x for x in failed) and any("no face found" in x for x in failed)
    assert any("no such file" in x for x in failed)
    assert "1/4 clips reconstructed" in out and (tmp_path / "res" / "good" / "overlay.mp4").is_file()
    assert not (tmp_path / "res" / "good" / "animation.glb").exists()
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["good"]  # nothing half-written
    # Two clips of one name in a run get two folders.
    (tmp_path / "b").mkdir()
    twin = write_clip_video(short_clip, tmp_path / "b" / "good.mp4")
    assert main(["video", str(good), str(twin), "--out", str(tmp_path / "twins"), "--quiet", "--no-glb",
                 "--no-overlay"]) == 0
    assert sorted(p.name for p in (tmp_path / "twins").iterdir() if not p.name.startswith(".")) == ["good", "good-2"]
    capsys.readouterr()
    # A folder faceclip did not write is never replaced.
    (tmp_path / "res2" / "good").mkdir(parents=True)
    (tmp_path / "res2" / "good" / "mine.txt").write_text("keep")
    assert main(["video", str(good), "--out", str(tmp_path / "res2"), "--quiet"]) == 2
    assert (tmp_path / "res2" / "good" / "mine.txt").read_text() == "keep"
    assert "not created by faceclip" in capsys.readouterr().err


def test_unreadable_frame_in_a_folder_is_reported_and_interpolated(tmp_path, video_rec, capsys):
    from PIL import Image

    from faceclip.cli import main

    photo = np.asarray(Image.open(FACES_DIR / "astronaut.png").convert("RGB"))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(_pan_zoom_clip(photo, 8)):
        Image.fromarray(f).save(folder / f"frame{i}.png")
    (folder / "frame3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))  # a corrupt frame
    code = main(["video", str(folder), "--out", str(tmp_path / "res"), "--fps", "8", "--quiet", "--no-glb"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning:" in err and "frame 3" in err and "Traceback" not in err
    assert "1 frames interpolated: 3" in out
    lines = [json.loads(x) for x in (tmp_path / "res" / "frames" / "tracks.jsonl").read_text().splitlines()]
    frames = [x for x in lines if x["type"] == "frame"]
    assert len(frames) == 8 and frames[3].get("unreadable") is True and "unreadable" not in frames[2]
    assert frames[3]["faces"][0]["observed"] is False and frames[4]["faces"][0]["observed"] is True
    assert abs(frames[3]["time_s"] - 3 / 8) < 1e-6
    from faceclip.io.video import iter_frames, probe_video

    assert len(list(iter_frames(probe_video(tmp_path / "res" / "frames" / "overlay.mp4")))) == 8
