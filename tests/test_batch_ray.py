"""The Ray backend (``faceclip reconstruct --backend ray``) on a local Ray instance started here:
the same results as the local backend, failures per photo, ``--resume``, ``--address``, URLs
read and written by Ray's worker processes, and lost workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (the `ray` extra; requirements-test.lock pins it)")

from conftest import FACES_DIR  # noqa: E402
from test_batch import EXAMPLE, OPTIONS_ARGS, _close, _params  # noqa: E402

from faceclip.batch import expand_sources, read_manifest, run_batch  # noqa: E402
from faceclip.errors import FaceClipError  # noqa: E402
from faceclip.reconstruction import ReconstructOptions  # noqa: E402

OPTIONS = ReconstructOptions(method="regress", texture_px=64)  # OPTIONS_ARGS, as options
FACES = ["2008_001009.jpg", "astronaut.png"]


@pytest.fixture(scope="module")
def cluster(ict_cache, tmp_path_factory):
    """A local Ray instance (2 CPUs, no dashboard) for the module, and the root of ``dir://``
    URLs: fsspec's DirFileSystem over a temporary folder, configured through fsspec's
    environment variable so that Ray's worker processes (started now) see the same files."""
    import fsspec.config

    root = tmp_path_factory.mktemp("dirfs")
    saved_env, saved_conf = os.environ.get("FSSPEC_DIR"), fsspec.config.conf.get("dir")
    os.environ["FSSPEC_DIR"] = json.dumps({"path": str(root)})
    fsspec.config.conf["dir"] = {"path": str(root)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield {"address": ray.get_runtime_context().gcs_address, "root": root}
    ray.shutdown()
    if saved_env is None:
        os.environ.pop("FSSPEC_DIR", None)
    else:
        os.environ["FSSPEC_DIR"] = saved_env
    if saved_conf is None:
        fsspec.config.conf.pop("dir", None)
    else:
        fsspec.config.conf["dir"] = saved_conf


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two photos with a face and one broken file."""
    d = tmp_path_factory.mktemp("ray_photos")
    shutil.copy(FACES_DIR / FACES[0], d / FACES[0])
    shutil.copy(EXAMPLE, d / FACES[1])
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return d


@pytest.fixture(scope="module")
def local_run(ict_cache, photos, tmp_path_factory) -> Path:
    """The local backend in this process, one thread (as each Ray actor has here)."""
    import torch

    out = tmp_path_factory.mktemp("local") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_batch(sorted(photos.iterdir()), out, OPTIONS, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Result files but the JSON ones (params.json, the markers, the manifest) -> their bytes."""
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()
            and f.suffix not in (".json", ".jsonl")}


def _same_results(out: Path, ref: Path) -> None:
    """The same folders and files, meshes and images byte for byte, params.json numbers within
    tolerance (the photo's name aside: a URL or another path)."""
    assert _files(out) == _files(ref)
    folders = sorted(p.name for p in ref.iterdir() if p.is_dir())
    assert folders and sorted(p.name for p in out.iterdir() if p.is_dir()) == folders
    for name in folders:
        assert _close(_params(out / name / "params.json"), _params(ref / name / "params.json")), name


def _lines(manifest: dict[str, list[dict]]) -> list[list[dict]]:
    """Manifest lines per photo (sorted by file name), without timings and times, reasons and the photo's path."""
    drop = ("seconds", "finished", "reason", "image", "image_abs")
    return [[{f: v for f, v in rec.items() if f not in drop} for rec in manifest[k]]
            for k in sorted(manifest, key=lambda k: k.rsplit("/", 1)[-1])]


def test_resume_on_a_cluster_at_an_address(cluster, photos, local_run, tmp_path):
    """`--backend ray --address HOST:PORT --resume` from another process: a run with one
    result missing redoes that photo (and the failed one), and skips the other."""
    out = tmp_path / "out"
    shutil.copytree(local_run, out)
    shutil.rmtree(out / "astronaut")
    kept = (out / "2008_001009" / "mesh.glb").stat().st_mtime_ns
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out", str(out),
                          *OPTIONS_ARGS, "--backend", "ray", "--address", cluster["address"], "--workers", "2",
                          "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 2, res.stderr  # broken.jpg fails again
    assert "resumed: 1 images already done" in res.stdout and "astronaut.png face 0" in res.stdout
    assert "broken.jpg" in res.stderr and "Traceback" not in res.stderr
    assert (out / "2008_001009" / "mesh.glb").stat().st_mtime_ns == kept
    _same_results(out, local_run)
    assert _lines(read_manifest(out)) == _lines(read_manifest(local_run))  # one line per face or failure


def test_ray_gives_the_local_results_through_urls(cluster, photos, local_run, monkeypatch):
    """dir:// URLs in and out (an fsspec filesystem that is not the local one): Ray's worker
    processes read the photos and upload the results, identical to the local backend's; the
    broken file fails alone; resuming finds the others done."""
    import faceclip.batch

    def no_models_here(*args, **kwargs):
        raise AssertionError("the Ray backend loaded the models in this process")

    monkeypatch.setattr(faceclip.batch, "Reconstructor", no_models_here)  # the actors are other processes
    root = cluster["root"]
    shutil.copytree(photos, root / "in")
    reports = run_batch(expand_sources(["dir://in"]), "dir://res", OPTIONS, workers=2, backend="ray",
                        show_progress=False)
    assert [str(r.image) for r in reports] == [f"dir://in/{n}" for n in [*FACES, "broken.jpg"]]
    assert [len(r.faces) for r in reports] == [1, 1, 0] and "not a recognised image" in reports[2].error
    _same_results(root / "res", local_run)
    for name in FACES:
        stem = Path(name).stem
        assert json.loads((root / "res" / stem / "params.json").read_text())["image"] == f"dir://in/{name}"
        marker = json.loads((root / "res" / stem / ".faceclip-result.json").read_text())
        assert marker["image"] == f"dir://in/{name}" and "in_progress" not in marker
    assert _lines(read_manifest("dir://res")) == _lines(read_manifest(local_run))
    again = run_batch([f"dir://in/{n}" for n in FACES], "dir://res", OPTIONS, workers=2, backend="ray", resume=True,
                      show_progress=False)
    assert [r.skipped for r in again] == [True, True]


def test_unreachable_address_is_a_clear_error(cluster, tmp_path, capsys):
    from faceclip.cli import main

    t0 = time.monotonic()
    assert main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path / "o"), "--backend", "ray",
                 "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in err and "ray start --head" in err
    assert time.monotonic() - t0 < 30 and not (tmp_path / "o").exists()


# ---- run_on_ray itself, with trivial work (these functions are sent to the actors by value)

def _pid(threads: int) -> int:
    return os.getpid()


def _die_on_two(pid: int, item: int) -> tuple[int, int]:
    if item == 2:
        os._exit(1)  # the actor's process dies, as when it is killed or out of memory
    return item, pid


def _no_state(threads: int):
    raise FaceClipError("model 'ict' is not installed", hint="faceclip models install ict")


@pytest.fixture
def by_value():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_lost_worker_fails_only_its_item_and_is_replaced(cluster, by_value):
    from faceclip.distributed import WorkerLost, run_on_ray

    results: dict = {}
    run_on_ray(list(range(6)), _pid, _die_on_two, results.__setitem__, workers=2)
    assert sorted(results) == list(range(6))
    assert isinstance(results[2], WorkerLost) and "Ray worker died" in str(results[2])
    assert all(results[i][0] == i for i in results if i != 2)
    assert os.getpid() not in {results[i][1] for i in results if i != 2}  # done in the actors


def test_a_state_that_cannot_be_made_stops_the_run_with_its_error(cluster, by_value):
    from faceclip.distributed import run_on_ray

    with pytest.raises(FaceClipError, match="not installed") as info:
        run_on_ray([1, 2, 3], _no_state, _die_on_two, lambda item, result: None, workers=2)
    assert info.value.hint == "faceclip models install ict"
