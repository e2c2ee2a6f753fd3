"""Batches: planned names, the results.jsonl manifest, --resume after SIGKILL, --workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FACES_DIR, REPO
from faceclip.batch import MANIFEST_NAME, plan_output_names, read_manifest
from faceclip.io.outputs import write_result_folder

EXAMPLE = REPO / "examples" / "astronaut.png"
FAST = ["--method", "regress", "--texture-size", "64", "--quiet"]
PHOTOS = ["2008_001009.jpg", "2008_002079.jpg", "2009_004587.jpg", "dogs.jpg"]


def _cli(*args: str, threads: int = 1, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "faceclip.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, **kw)


def _results(out: Path) -> dict[str, bytes]:
    """Every result file (not the manifest) -> its bytes, params.json without timings."""
    got = {}
    for f in sorted(out.rglob("*")):
        if not f.is_file() or f.name == MANIFEST_NAME:
            continue
        data = f.read_bytes()
        if f.name == "params.json":
            d = json.loads(data)
            data = json.dumps({k: v for k, v in d.items() if k != "seconds"}, sort_keys=True).encode()
        got[str(f.relative_to(out))] = data
    return got


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(FACES_DIR / name, d / name)
    shutil.copy(EXAMPLE, d / "astronaut.png")
    return d


@pytest.fixture(scope="module")
def reference(ict_cache, photos, tmp_path_factory):
    """An uninterrupted single-process run, one thread."""
    out = tmp_path_factory.mktemp("ref") / "out"
    res = _cli("reconstruct", str(photos), "--out", str(out), *FAST)
    assert res.returncode == 2  # dogs.jpg has no face
    return out


def test_plan_output_names():
    paths = [Path("a/photo.png"), Path("b/photo.jpg"), Path("g/group.jpg"), Path("g/group_face1.png"),
             Path("x/..jpg"), Path("x/group_face2-x.png")]
    assert plan_output_names(paths) == ["photo", "photo-2", "group", "group_face1-2", "image", "group_face2-x"]
    # The manifest's name is never a photo's folder; neither are folders of earlier runs.
    assert plan_output_names([Path("x/results.jsonl.png"), Path("y/photo.jpg")], {"photo"}) == [
        "results.jsonl-2", "photo-2"]
    assert plan_output_names([Path("g/G.jpg"), Path("g/g_FACE0.png")]) == ["G", "g_FACE0-2"]


def test_manifest_lists_every_face_and_failure(reference):
    entries = read_manifest(reference)
    assert len(entries) == len(PHOTOS) + 1
    by_name = {Path(k).name: v for k, v in entries.items()}
    assert by_name["dogs.jpg"][0]["status"] == "failed" and "no face" in by_name["dogs.jpg"][0]["reason"]
    ok = [rec for lines in entries.values() for rec in lines if rec["status"] == "ok"]
    assert len(ok) == len(PHOTOS) - 1 + 1
    for rec in ok:
        assert (reference / rec["folder"] / "mesh.glb").is_file() and rec["seconds"]["fit"] >= 0
    # Each line carries the time it was written (Unix seconds), in the order the lines were written.
    written = [rec["finished"] for lines in entries.values() for rec in lines]
    assert all(abs(t - time.time()) < 3600 for t in written) and written == sorted(written)


def test_sigkilled_run_resumes_to_the_same_results(reference, photos, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out", str(out),
                             *FAST], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once the first photo is done
        if (out / MANIFEST_NAME).is_file() and (out / MANIFEST_NAME).read_text().count("\n") >= 2:  # header + one photo
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = read_manifest(out)
    assert 1 <= len(done_before) < len(PHOTOS) + 1, "killed too late to test resuming"
    res = _cli("reconstruct", str(photos), "--out", str(out), *FAST, "--resume")
    assert res.returncode == 2, res.stderr
    assert f"resumed: {sum(1 for v in done_before.values() if v[0]['status'] == 'ok')} images already done" in res.stdout
    assert _results(out) == _results(reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    entries = read_manifest(out)
    assert sorted(entries) == sorted(read_manifest(reference))
    assert all(len(v) == len(read_manifest(reference)[k]) for k, v in entries.items())  # no duplicate lines


def test_resume_skips_done_photos_and_retries_failures(reference, photos, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    res = _cli("reconstruct", str(photos), "--out", str(out), *FAST, "--resume")
    assert res.returncode == 2
    assert "resumed: 4 images already done" in res.stdout and "dogs.jpg" in res.stderr  # retried, fails again
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_dir()} == stamp
    # A result folder removed by the user is done again.
    shutil.rmtree(out / "astronaut")
    res = _cli("reconstruct", str(photos), "--out", str(out), *FAST, "--resume")
    assert "resumed: 3 images already done" in res.stdout
    assert (out / "astronaut" / "mesh.glb").is_file()


def test_two_workers_give_the_same_results(reference, photos, tmp_path):
    """Byte-identical to the single-process run with the same threads per process."""
    out = tmp_path / "out"
    res = _cli("reconstruct", str(photos), "--out", str(out), *FAST, "--workers", "2")
    assert res.returncode == 2, res.stderr
    assert _results(out) == _results(reference)
    assert "1 worker" not in res.stderr and "Traceback" not in res.stderr


def test_workers_report_a_missing_model_once(tmp_path, photos):
    env = {**os.environ, "FACECLIP_HOME": str(tmp_path / "empty_home")}
    res = subprocess.run([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out",
                          str(tmp_path / "o"), "--workers", "2", "--quiet"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 2
    assert "faceclip models install ict" in res.stderr and "Traceback" not in res.stderr


def test_workers_must_be_positive(tmp_path, capsys):
    from faceclip.cli import main

    assert main(["reconstruct", str(EXAMPLE), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_formats_choose_the_mesh_files(ict_cache, tmp_path, capsys):
    from faceclip.cli import main

    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "--out", str(out), *FAST, "--formats", "glb"]) == 0
    assert sorted(p.name for p in (out / "astronaut").iterdir()) == [
        ".faceclip-result.json", "mesh.glb", "overlay.png", "params.json"]
    assert main(["reconstruct", str(EXAMPLE), "--out", str(out), *FAST, "--formats", "obj,stl"]) == 2
    assert "choose from obj, ply, glb" in capsys.readouterr().err


def test_a_later_run_never_takes_an_earlier_photos_folder(ict_cache, tmp_path):
    a, b = tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"
    a.parent.mkdir()
    b.parent.mkdir()
    shutil.copy(EXAMPLE, a)
    shutil.copy(FACES_DIR / "2008_001009.jpg", b)
    out = tmp_path / "out"
    assert _cli("reconstruct", str(a), "--out", str(out), *FAST).returncode == 0
    assert _cli("reconstruct", str(b), "--out", str(out), *FAST).returncode == 0
    image = lambda d: json.loads((out / d / "params.json").read_text())["image"]  # noqa: E731
    assert image("photo") == str(a) and image("photo-2") == str(b)
    res = _cli("reconstruct", str(a), str(b), "--out", str(out), *FAST, "--resume")
    assert "resumed: 2 images already done" in res.stdout
    assert image("photo") == str(a) and image("photo-2") == str(b)


def test_manifest_temporary_never_follows_a_link(ict_cache, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / ".results.jsonl.tmp")
    assert _cli("reconstruct", str(EXAMPLE), "--out", str(out), *FAST).returncode == 0
    assert victim.read_text() == "precious"
    assert not (out / MANIFEST_NAME).is_symlink()


def test_ctrl_c_stops_the_workers_promptly_and_lists_what_they_finished(ict_cache, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) during a --workers 2 run ends
    it with 130 without working through the rest of the folder, and every result folder on
    disk is in the manifest (none half-written)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        shutil.copy(FACES_DIR / "2008_001009.jpg", photos / f"p{i:02d}.jpg")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out", str(out),
                             *FAST, "--workers", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    manifest = out / MANIFEST_NAME
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (
            not manifest.exists() or manifest.read_text().count("\n") < 2):  # header + one photo
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    listed = {rec["folder"] for recs in read_manifest(out).values() for rec in recs if rec["status"] == "ok"}
    assert folders == listed and 1 <= len(folders) < 20, (folders, listed)


def test_ctrl_c_while_a_result_is_recorded_waits_for_the_end_of_it():
    from faceclip.batch import _ctrl_c_deferred

    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with _ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # delivered here, and held
            done.append("recorded")
    assert done == ["recorded"] and signal.getsignal(signal.SIGINT) is before


def test_the_spawned_workers_leave_this_process_its_share_of_a_small_batch():
    from faceclip.batch import _pool_share

    def first_hand_out(workers: int, photos: int) -> int:  # as _run_pool's feed() does it
        held, left = 0, photos
        while left and held < _pool_share(workers, left):
            held, left = held + 1, left - 1
        return held

    assert first_hand_out(2, 2) == 1  # two photos, two workers: one each
    assert first_hand_out(3, 3) == 2 and first_hand_out(4, 5) == 3
    assert first_hand_out(2, 40) == 2  # one running and one queued per spawned process
    assert first_hand_out(4, 100) == 6


def test_a_photo_lost_by_a_broken_pool_is_reported_not_waited_for(monkeypatch):
    """A pool that broke while a photo was being submitted leaves a future that never completes
    (CPython 3.11 sets its broken flag without its lock): the run reports the photo failed instead
    of waiting for ever. The pool and the photos' work are stand-ins."""
    from concurrent.futures import Future

    import faceclip.batch as batch
    from faceclip.reconstruction import ImageReport, ReconstructOptions

    class BrokenWhileSubmitting:
        _broken = "a worker process died"

        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def submit(self, fn, task) -> Future:
            return Future()  # never completed

        def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
            return None

    monkeypatch.setattr(batch, "ProcessPoolExecutor", BrokenWhileSubmitting)
    monkeypatch.setattr(batch, "Reconstructor", lambda options: None)
    monkeypatch.setattr(batch, "_run_task", lambda rec, task: ImageReport(task[1]))
    monkeypatch.setattr(batch, "_LOST_AFTER_S", 0.2)
    tasks = [(i, Path(f"p{i}.jpg"), Path("out"), f"p{i}") for i in range(5)]
    got: dict[int, ImageReport] = {}
    batch._run_pool(ReconstructOptions(), tasks, 2, got.__setitem__)
    assert sorted(got) == list(range(5))
    lost = sorted(i for i, r in got.items() if r.error)
    assert lost == [0, 1] and all("worker process died" in got[i].error for i in lost)


def _spawned_workers(pid: int) -> list[int]:
    """The pool processes that process ``pid`` has spawned (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        pids = [int(x) for x in children.read_text().split()]
    except OSError:
        return []
    found = []
    for p in pids:
        try:
            if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text():
                found.append(p)
        except OSError:
            pass
    return found


def _running(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie has ended


def test_a_killed_run_leaves_no_worker_process_behind(ict_cache, photos, tmp_path):
    """SIGKILL of the faceclip process (the out-of-memory killer, say) ends its pool processes too:
    they would wait for work forever, and they ignore Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out",
                             str(tmp_path / "out"), *FAST, "--workers", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _spawned_workers(proc.pid):
        time.sleep(0.05)
    workers = _spawned_workers(proc.pid)
    assert proc.poll() is None and workers, "no worker started"
    proc.kill()
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(_running(w) for w in workers):
        time.sleep(0.1)
    assert not any(_running(w) for w in workers)


def test_a_killed_worker_fails_its_photo_instead_of_hanging(ict_cache, photos, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "faceclip.cli", "reconstruct", str(photos), "--out", str(out),
                             *FAST, "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _spawned_workers(proc.pid):
        time.sleep(0.05)
    assert proc.poll() is None and _spawned_workers(proc.pid), "no worker to kill"
    time.sleep(0.5)
    os.kill(_spawned_workers(proc.pid)[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)  # must not hang
    assert proc.returncode == 2
    assert "worker process died" in stderr and "--resume" in stderr
    # the killed process held at most two photos; this process did the others
    lines = [rec for recs in read_manifest(out).values() for rec in recs]
    died = [rec for rec in lines if "worker process died" in rec.get("reason", "")]
    assert 1 <= len(died) <= 2 and sum(rec["status"] == "ok" for rec in lines) >= 2, lines
    res = _cli("reconstruct", str(photos), "--out", str(out), *FAST, "--resume")
    assert res.returncode == 2 and "dogs.jpg" in res.stderr and "worker process died" not in res.stderr


def test_one_run_at_a_time_per_output_folder(tmp_path):
    from faceclip.batch import LOCK_NAME, RunLock
    from faceclip.io.outputs import OutputError

    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out) as first:
        assert first.held and (out / LOCK_NAME).is_file()
        with pytest.raises(OutputError, match="another faceclip run is writing") as info:
            RunLock(out).__enter__()
        assert f"pid {os.getpid()}" in info.value.message
        # a second process is refused too (flock locks belong to open files, across processes)
        code = ("import sys; from pathlib import Path; from faceclip.batch import RunLock\n"
                "try:\n    RunLock(Path(sys.argv[1])).__enter__()\nexcept Exception as e:\n"
                "    print(type(e).__name__, e); sys.exit(3)\n")
        res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
        assert res.returncode == 3 and "another faceclip run" in res.stdout
    assert not (out / LOCK_NAME).exists()  # removed at the end of the run
    with RunLock(out) as again:
        assert again.held


def test_resume_redoes_photos_made_with_other_options(tmp_path):
    from faceclip.batch import _done_faces, options_sha
    from faceclip.reconstruction import ReconstructOptions

    a, b = ReconstructOptions(), ReconstructOptions(landmarks="dlib68")
    assert options_sha(a) == options_sha(ReconstructOptions(device="cuda", overwrite=True))
    assert options_sha(a) != options_sha(b)
    folder = tmp_path / "photo"
    write_result_folder(folder, lambda t: (t / "mesh.obj").write_text("v 0 0 0\n"),
                        meta={"image": str(tmp_path / "photo.jpg")})
    lines = [{"status": "ok", "folder": "photo", "image_abs": os.path.abspath(tmp_path / "photo.jpg"),
              "options_sha": options_sha(a), "face_index": 0}]
    assert _done_faces(lines, tmp_path, options_sha(a)) == lines
    assert _done_faces(lines, tmp_path, options_sha(b)) is None  # made with other options: redo


# --------------------------------------------------------------------------- URLs (fsspec), backends

OPTIONS_ARGS = ["--method", "regress", "--texture-size", "64", "--quiet"]  # FAST, in-process


def _params(params: Path | str) -> dict:
    """A result's params.json (a file, or its text) without timings and without the photo's name."""
    d = json.loads(params.read_text() if isinstance(params, Path) else params)
    return {k: v for k, v in d.items() if k not in ("seconds", "image")}


def _close(a, b, tol: float = 1e-4) -> bool:
    """Same structure, same strings, numbers within ``tol`` (relative and absolute)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return isinstance(b, (int, float)) and abs(a - b) <= tol * (1 + abs(a))
    return a == b


@pytest.fixture
def memfs():
    """fsspec's in-memory filesystem, emptied before and after."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def test_memory_urls_round_trip(reference, memfs, capsys):
    """Photos read from and results written to memory:// (fsspec) in one process: the same
    results as from local paths, params.json and the marker naming the URL, and --resume."""
    from faceclip.cli import main

    names = ["2008_001009.jpg", "astronaut.png"]
    for name in names:
        memfs.pipe_file(f"/in/{name}", (FACES_DIR / name if name != "astronaut.png" else EXAMPLE).read_bytes())
    memfs.pipe_file("/in/broken.jpg", b"\xff\xd8 not really a JPEG")
    assert main(["reconstruct", "memory://in/", "--out", "memory://res", *OPTIONS_ARGS]) == 2
    captured = capsys.readouterr()
    assert "FAILED memory:///in/broken.jpg" in captured.err and "Traceback" not in captured.err
    entries = read_manifest("memory://res")
    assert sorted(entries) == [f"memory:///in/{n}" for n in ["2008_001009.jpg", "astronaut.png", "broken.jpg"]]
    assert entries["memory:///in/broken.jpg"][0]["status"] == "failed"
    for name in names:
        stem = Path(name).stem
        got = json.loads(memfs.cat_file(f"/res/{stem}/params.json"))
        assert got["image"] == f"memory:///in/{name}"
        marker = json.loads(memfs.cat_file(f"/res/{stem}/.faceclip-result.json"))
        assert marker["image"] == got["image"] and not marker.get("in_progress")
        assert sorted(marker["files"]) == sorted(p.name for p in (reference / stem).iterdir() if p.is_file()
                                                 and not p.name.startswith("."))
        assert _close(_params(json.dumps(got)), _params(reference / stem / "params.json"))
    # Resumed: done photos are skipped; a folder whose upload was cut short (its marker still
    # "in progress") is done again.
    claim = {**json.loads(memfs.cat_file("/res/astronaut/.faceclip-result.json")), "in_progress": True}
    memfs.pipe_file("/res/astronaut/.faceclip-result.json", json.dumps(claim).encode())
    assert main(["reconstruct", "memory://in/", "--out", "memory://res", *OPTIONS_ARGS, "--resume"]) == 2
    out = capsys.readouterr().out
    assert "resumed: 1 images already done" in out and "ok     memory:///in/astronaut.png" in out
    assert not json.loads(memfs.cat_file("/res/astronaut/.faceclip-result.json")).get("in_progress")
    lines = [json.loads(x) for x in memfs.cat_file("/res/results.jsonl").decode().splitlines()[1:]]
    assert sorted(rec["image"] for rec in lines) == sorted(entries)  # one line each, none twice


def test_publish_folder_keeps_the_output_policy(memfs, tmp_path):
    from faceclip.io.outputs import OutputError
    from faceclip.io.remote import publish_folder

    local = tmp_path / "face"
    write_result_folder(local, lambda t: [(t / n).write_text(n) for n in ("mesh.obj", "params.json")],
                        meta={"image": "a.jpg"})
    assert publish_folder(local, "memory://r/face") == ["memory://r/face/mesh.obj", "memory://r/face/params.json"]
    assert json.loads(memfs.cat_file("/r/face/.faceclip-result.json"))["image"] == "a.jpg"
    # A new result replaces the old one, files it no longer has included.
    (local / "mesh.obj").unlink()
    publish_folder(local, "memory://r/face")
    assert sorted(memfs.ls("/r/face", detail=False)) == ["/r/face/.faceclip-result.json", "/r/face/params.json"]
    # Files faceclip did not write, or a folder it did not make, are refused unless overwrite.
    memfs.pipe_file("/r/face/notes.txt", b"mine")
    with pytest.raises(OutputError, match="did not write"):
        publish_folder(local, "memory://r/face")
    memfs.pipe_file("/r/other/photo.jpg", b"mine")
    with pytest.raises(OutputError, match="not created by faceclip"):
        publish_folder(local, "memory://r/other")
    publish_folder(local, "memory://r/other", overwrite=True)
    assert memfs.cat_file("/r/face/notes.txt") == b"mine"


def test_url_and_backend_errors_are_one_clear_line(tmp_path, capsys, monkeypatch, memfs):
    import importlib.util

    from faceclip.cli import main

    def fails(*args: str, says: str) -> None:
        assert main(["reconstruct", *args]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err

    fails("nosuch://bucket/photos/", "--out", str(tmp_path / "o"), says="unknown URL protocol 'nosuch'")
    fails(str(EXAMPLE), "--out", "nosuch://bucket/out", says="unknown URL protocol 'nosuch'")
    if importlib.util.find_spec("gcsfs") is None:
        fails("gs://bucket/photos/", "--out", str(tmp_path / "o"), says="needs a package that is not installed")
    memfs.pipe_file("/in/a.jpg", EXAMPLE.read_bytes())
    fails("memory://in/a.jpg", "--out", str(tmp_path / "o"), "--workers", "2", says="live in this process only")
    fails(str(EXAMPLE), "--out", "memory://out", "--backend", "ray", says="live in this process only")
    out = str(tmp_path / "o")
    fails(str(EXAMPLE), "--out", out, "--address", "127.0.0.1:6379", says="--address needs --backend ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    fails(str(EXAMPLE), "--out", out, "--backend", "ray", says='pip install -c constraints.txt -e ".[ray]"')
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_plan_actors_fits_the_cluster():
    from faceclip.distributed import plan_actors

    assert plan_actors(2, [2]) == (2, 1)  # a local instance with the local pool's layout
    assert plan_actors(1, [2]) == (1, 2)
    assert plan_actors(4, [16, 16]) == (4, 8)
    assert plan_actors(2, [4, 64]) == (2, 32)  # an actor runs on one node: both on the large one
    assert plan_actors(3, [2, 2]) == (3, 1)
    assert plan_actors(5, [2, 0]) == (2, 1)  # more workers than CPUs: one per CPU
