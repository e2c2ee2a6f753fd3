"""The training loop (faceclip.train.loop) and `faceclip train`: resume, SIGKILL, DDP, logs, errors.

Every run is tiny (64 px crops and renders, a 32-wide PRM, random backbone, batch 2) and reads
its synthetic faces from one shared sample cache, so the faces are rendered once per session.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceclip.cli import main as cli_main
from faceclip.errors import InputError
from faceclip.train.config import config_from_dict, load_config
from faceclip.train.loop import (
    CHECKPOINT_NAME,
    DistInfo,
    _batch_plan,
    build_datasets,
    load_checkpoint,
    train,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke_cpu.yaml"
N = 4  # steps of the resume / kill comparisons

#: Tiny settings on top of configs/smoke_cpu.yaml (the CLIP term is off: no weights in tests).
TINY = {"data.image_px": 64, "data.render_px": 64, "render_px": 64, "model.prm_dim": 32, "model.pretrained": False,
        "identity_encoder": "none", "loss.clip": 0.0, "data.n_train": 16, "data.n_val": 0, "batch_size": 2,
        "steps": N, "log_every": 1, "ckpt_every": 2, "grid_every": 0, "val_every": 0}


def _overrides(out_dir: Path, cache: Path, **extra) -> dict:
    return {**TINY, "out_dir": str(out_dir), "data.path": str(cache), **extra}


def _set_args(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={v}"]
    return out


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / CHECKPOINT_NAME)["model"]["state_dict"]


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


def _metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_rows(run_dir: Path) -> list[dict]:
    return [r for r in _metric_rows(run_dir) if r.get("loss")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny networks and renders run several times faster so on a
    shared, loaded machine (threads wait for each other), and every run of the module, in
    this process or a subprocess (OMP_NUM_THREADS=1), sums in the same order."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, ict_cache) -> Path:
    """Synthetic-sample cache shared by every run of this module (filled by the first run).

    The albedo harmonics are also put in their disk cache first and read back from it, as a
    fresh process reads them: computed in-process they are float64 rounded after scaling, read
    back float32 scaled, a one-ulp difference that Adam amplifies into different weights, and
    the runs of this module in a subprocess must match the ones in this process.
    """
    from faceclip.facemodel import load_face_model
    from faceclip.facemodel import albedo

    albedo.make_albedo_model(load_face_model("ict", geometry="head_eyes"))
    albedo._CACHE.clear()
    return tmp_path_factory.mktemp("synth_cache")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
    """N steps in one go, with grids every 2 steps and a validation at the end."""
    out = tmp_path_factory.mktemp("straight")
    cfg = load_config(SMOKE, _overrides(out, cache, **{"grid_every": 2, "data.n_val": 1, "val_every": N}))
    return cfg, train(cfg, progress=False)


# ------------------------------------------------------------------ resume


def test_resume_continues_exactly(straight, cache, tmp_path):
    _, full = straight
    assert full.steps_done == N and full.regressor_path is not None
    cfg = load_config(SMOKE, _overrides(tmp_path, cache))
    first = train(cfg, stop_after=N // 2, progress=False)
    assert first.steps_done == N // 2 and first.regressor_path is None  # not finished: no regressor.pt
    assert load_checkpoint(tmp_path / "checkpoints" / CHECKPOINT_NAME)["step"] == N // 2
    second = train(cfg, resume=True, progress=False)
    assert second.steps_done == N and second.regressor_path is not None

    diff = _max_abs_diff(_weights(full.out_dir), _weights(tmp_path))
    print(f"resume: max abs weight difference after {N} steps straight vs {N // 2}+{N // 2}: {diff:.3g}")
    assert diff <= 1e-6
    # Same losses step by step, and metrics.csv holds each step once.
    a, b = _train_rows(full.out_dir), _train_rows(tmp_path)
    assert [int(r["step"]) for r in b] == list(range(1, N + 1))
    for ra, rb in zip(a, b):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5, abs=1e-7), ra["step"]
        assert float(rb["lr"]) == float(ra["lr"])


def test_resume_without_checkpoint_is_a_clear_error(cache, tmp_path):
    cfg = load_config(SMOKE, _overrides(tmp_path, cache))
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        train(cfg, resume=True, progress=False)


@pytest.mark.slow
def test_sigkill_keeps_the_last_checkpoint_and_resume_finishes(straight, cache, tmp_path):
    _, full = straight
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / CHECKPOINT_NAME
    cmd = [sys.executable, "-m", "faceclip.cli", "train", "--config", str(SMOKE), "--out", str(out), "--quiet",
           *_set_args({**TINY, "data.path": cache, "ckpt_every": 1})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ckpt.is_file(), f"no checkpoint appeared; output:\n{proc.stdout.read().decode(errors='replace')[-3000:]}"
    assert alive, "the run ended before it could be killed"
    state = load_checkpoint(ckpt)  # a complete checkpoint, whatever the moment of the kill
    assert 1 <= state["step"] < N
    assert {"model", "optimizer", "scheduler", "scaler", "step", "rng", "config", "world_size"} <= set(state)
    # A kill during a write leaves a temporary beside the checkpoint: it must neither be read
    # nor stay behind.
    (out / "checkpoints" / f".{CHECKPOINT_NAME}.k1ll3d.pt").write_bytes(b"partial")

    rc = cli_main(["train", "--config", str(out / "config.yaml"), "--resume", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [CHECKPOINT_NAME]
    assert load_checkpoint(ckpt)["step"] == N
    diff = _max_abs_diff(_weights(full.out_dir), _weights(out))
    print(f"SIGKILL at step {state['step']} + resume vs straight: max abs weight difference {diff:.3g}")
    assert diff <= 1e-6
    assert [int(r["step"]) for r in _train_rows(out)] == list(range(1, N + 1))


# ------------------------------------------------------------------ distributed


def test_batch_plan_shards_the_global_batch():
    n, seed, batch = 7, 3, 2
    for step in range(5):
        single = _batch_plan(step, 2 * batch, DistInfo(0, 1), n, seed)
        ranks = [_batch_plan(step, batch, DistInfo(r, 2), n, seed) for r in range(2)]
        assert ranks[0] + ranks[1] == single  # two ranks together = one process with the global batch
    # Every sample once per epoch, augmentation seeds all different.
    plan = [p for s in range(7) for p in _batch_plan(s, 2, DistInfo(0, 1), 7, seed)]
    assert sorted(i for i, _ in plan[:7]) == list(range(7)) and sorted(i for i, _ in plan[7:]) == list(range(7))
    assert len({a for _, a in plan}) == len(plan)


_DDP_DRIVER = '''
import os, sys
import torch
import faceclip.train.data as data
import faceclip.train.loop as loop
from faceclip.cli import main

nets, sources = [], []
_build = loop.build_model
_collate = data.collate


def collate(samples):  # record which faces this rank trained on
    sources.append([s.source for s in samples])
    return _collate(samples)


def build_model(cfg, face_model):  # keep each rank's network to compare them afterwards
    net = _build(cfg, face_model)
    nets.append(net)
    return net


loop.build_model = build_model
data.collate = collate
rc = main(sys.argv[1:])
torch.save({"params": {k: v.detach().clone() for k, v in nets[0].named_parameters()}, "sources": sources},
           os.path.join(os.environ["DDP_TEST_OUT"], "rank%s.pt" % os.environ["RANK"]))
sys.exit(rc)
'''

_NO_LAUNCH = ("RendezvousConnectionError", "DistNetworkError", "Address family not supported", "errno: 97",
              "Cannot assign requested address", "RendezvousTimeoutError")


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_gloo(cache, tmp_path):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this PyTorch build")
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(_DDP_DRIVER)
    out = tmp_path / "run"
    env = dict(os.environ, DDP_TEST_OUT=str(tmp_path), OMP_NUM_THREADS="1")
    steps = 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(driver),
           "train", "--config", str(SMOKE), "--out", str(out), "--quiet",
           *_set_args({**TINY, "data.path": cache, "steps": steps, "ckpt_every": steps})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in 420 s; output:\n{(exc.stdout or '')[-3000:]}{(exc.stderr or '')[-3000:]}")
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(s in text for s in _NO_LAUNCH):
        pytest.skip(f"torchrun cannot start processes on this machine: {text[-500:]}")
    assert proc.returncode == 0, text[-4000:]
    assert f"trained {steps} steps" in proc.stdout
    assert proc.stdout.count("trained ") == 1  # only rank 0 reports

    state = load_checkpoint(out / "checkpoints" / CHECKPOINT_NAME)
    assert state["world_size"] == 2 and state["step"] == steps
    rec0, rec1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # Each rank trained on its half of the global batch (together: a one-process plan of batch 4)...
    for step, (s0, s1) in enumerate(zip(rec0["sources"], rec1["sources"])):
        single = [i for i, _ in _batch_plan(step, 2 * TINY["batch_size"], DistInfo(0, 1), TINY["data.n_train"], 0)]
        assert [int(s.rsplit(":", 1)[1]) for s in s0 + s1] == single
    assert len(rec0["sources"]) == len(rec1["sources"]) == steps
    # ... so identical weights after the steps mean that DDP averaged their gradients.
    r0, r1 = rec0["params"], rec1["params"]
    diff = _max_abs_diff(r0, r1)
    print(f"DDP: max abs difference between the ranks' parameters after {steps} steps: {diff:.3g}")
    assert diff == 0.0
    assert r0["heads.heads.identity.weight"].abs().max() > 0  # the (zero-initialised) heads did learn
    saved = state["model"]["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in r0.items())
    rows = _train_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert all(float(r["images_per_s"]) > 0 for r in rows)


# ------------------------------------------------------------------ logs


def test_logs_metrics_tensorboard_grids_and_config(straight):
    cfg, result = straight
    out = result.out_dir
    rows = _metric_rows(out)
    train_rows = _train_rows(out)
    assert [int(r["step"]) for r in train_rows] == list(range(1, N + 1))
    terms = ["loss_photometric", "loss_landmark", "loss_regularization", "loss_albedo_priors",
             "loss_expression_range", "loss_param"]
    for r in train_rows:
        for k in ["lr", "loss", "images_per_s", *terms]:
            assert math.isfinite(float(r[k])), (r["step"], k)
        assert float(r["lr"]) == pytest.approx(cfg.optim.lr)
    val = [r for r in rows if r.get("val_loss")]
    assert len(val) == 1 and int(val[0]["step"]) == N
    for k in ("val_loss", "val_vertex_mm", "val_nme", "val_realy_all_mm"):
        assert math.isfinite(float(val[0][k])), k
    assert result.validation and set(result.validation) >= {"loss", "vertex_mm", "nme"}

    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"lr", "loss", *terms, "val_vertex_mm"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss_param")] == list(range(1, N + 1))
    assert "grid" in tags["images"]

    from PIL import Image

    grids = sorted(p.name for p in (out / "grids").glob("*.png"))
    assert grids == ["step0000002.png", "step0000004.png"]
    img = np.asarray(Image.open(out / "grids" / grids[-1]).convert("RGB")).astype(np.float64) / 255
    S = cfg.render_px
    assert img.shape == (cfg.batch_size * S, 3 * S, 3)  # one row per sample: input | overlay | shaded mesh
    panels = [img[:, i * S:(i + 1) * S] for i in range(3)]
    for name, p in zip(("input", "overlay", "shaded mesh"), panels):
        assert p.std() > 0.03, name  # not blank
    assert np.abs(panels[0] - panels[1]).mean() > 0.005  # the render is drawn over the input
    assert np.abs(panels[0] - panels[2]).mean() > 0.05
    shaded = panels[2]
    assert (np.abs(shaded - 0.15) < 0.01).all(-1).mean() > 0.2  # dark-grey background around the mesh
    assert (shaded.mean(-1) > 0.3).mean() > 0.1  # and a lit mesh

    saved = load_config(out / "config.yaml")
    assert saved.to_dict() == cfg.to_dict()
    from faceclip.nets.regressor import load_regressor

    net = load_regressor(result.regressor_path)
    ref = _weights(out)
    assert all(torch.equal(v, ref[k]) for k, v in net.state_dict().items())


def test_metrics_csv_keeps_complete_rows_up_to_the_resumed_step(tmp_path):
    from faceclip.train.loop import _Logs

    # Rows after the checkpoint (step 2) and a row cut short by SIGKILL ("1" of "12,...").
    (tmp_path / "metrics.csv").write_text("step,lr,loss\n1,0.1,2.0\n2,0.1,1.5\n3,0.1,1.0\n1")
    logs = _Logs(tmp_path, True, resume_step=2)
    logs.row({"step": 3, "lr": 0.1, "loss": 0.9, "loss_new": 4.0})  # a new column rewrites the header
    logs.close()
    rows = _metric_rows(tmp_path)
    assert [(r["step"], r["loss"], r["loss_new"]) for r in rows] == [("1", "2.0", ""), ("2", "1.5", ""), ("3", "0.9", "4.0")]
    # A fresh run (not resumed) in the same folder starts a new file.
    logs = _Logs(tmp_path, True, resume_step=0)
    logs.row({"step": 1, "lr": 0.2, "loss": 5.0})
    logs.close()
    assert [(r["step"], r["loss"]) for r in _metric_rows(tmp_path)] == [("1", "5.0")]


# ------------------------------------------------------------------ configuration errors


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['stpes'\]"):
        config_from_dict({"stpes": 3})
    with pytest.raises(InputError, match=r"config\.data: unknown setting\(s\) \['knd'\]"):
        config_from_dict({"data": {"knd": "folder"}})
    with pytest.raises(InputError, match="photometirc"):
        config_from_dict({"loss": {"photometirc": 1.0}})
    with pytest.raises(InputError, match="data.kind must be 'synthetic' or 'folder', got 'video'"):
        config_from_dict({"data": {"kind": "video"}})
    with pytest.raises(InputError, match="data.path is required") as err:
        config_from_dict({"data": {"kind": "folder"}})
    assert "prepare-data" in str(err.value)
    with pytest.raises(InputError, match="steps and batch_size must be positive"):
        config_from_dict({"steps": 0})
    with pytest.raises(InputError, match="expected a mapping"):
        config_from_dict({"model": [1, 2]})

    # A folder that is not there (or not a prepared cache) fails when the data are opened.
    cfg = config_from_dict({"data": {"kind": "folder", "path": str(tmp_path / "photos_cache")}})
    with pytest.raises(InputError, match="no such face cache") as err:
        build_datasets(cfg, None)
    assert "prepare-data" in str(err.value) and "photos_cache" in str(err.value)

    from faceclip.train.loop import _identity_loss
    from faceclip.train.objective import LossWeights

    with pytest.raises(InputError, match="identity_encoder 'arcface'"):
        _identity_loss(config_from_dict({"identity_encoder": "arcface"}), LossWeights(), "cpu")

    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="expected a mapping"):
        load_config(listed)
    # Overrides (--set) go through the same checks.
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['lrr'\]"):
        load_config(SMOKE, {"optim.lrr": 1e-3})
    assert load_config(SMOKE, {"optim.lr": 1e-3, "data.n_train": 5}).optim.lr == 1e-3


def test_cli_config_errors_exit_2_without_traceback(tmp_path, capsys):
    rc = cli_main(["train", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "config file not found" in err and "Traceback" not in err
    rc = cli_main(["train", "--config", str(SMOKE), "--set", "data.kind=video", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "data.kind must be" in err and "Traceback" not in err
    rc = cli_main(["train", "--config", str(SMOKE), "--set", "steps"])
    err = capsys.readouterr().err
    assert rc == 2 and "--set expects KEY=VALUE" in err
    assert not (tmp_path / "x").exists()


def test_cli_missing_config_in_a_fresh_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "faceclip.cli", "train", "--config", "missing.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 2
    assert "config file not found: missing.yaml" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ learning


@pytest.mark.slow
def test_training_overfits_a_fixed_batch(ict_cache, tmp_path):
    """Two faces, no augmentation: thirty steps clearly lower the supervised term."""
    steps = 30
    cfg = load_config(SMOKE, _overrides(tmp_path, tmp_path / "samples", **{
        "steps": steps, "data.n_train": 2, "data.augment": False, "ckpt_every": 1000, "optim.lr": 1e-3}))
    result = train(cfg, progress=False)
    param = [float(r["loss_param"]) for r in _train_rows(tmp_path)]
    assert len(param) == steps and all(math.isfinite(x) for x in param)
    first, last = np.mean(param[:3]), np.mean(param[-3:])
    print(f"overfit: param term {first:.3f} -> {last:.3f} cm over {steps} steps")
    assert last < 0.75 * first  # typically 1.03 -> 0.66 cm
    assert param[-1] < min(param[:5])
    assert result.steps_done == steps
