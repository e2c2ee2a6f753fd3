"""Output-path policy: safe and unique names, nothing of the user's deleted, atomic results,
stale temporaries cleaned, clear refusals (issue: reliability).

The data-loss cases run `faceclip reconstruct` in a temporary home folder holding files that
must survive; `--method regress` keeps them fast (the policy does not depend on the method).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import FACES_DIR, REPO
from faceclip.cli import main
from faceclip.errors import FaceClipError
from faceclip.io.outputs import (
    MARKER_NAME,
    NameAllocator,
    OutputError,
    check_replaceable,
    clean_stale_temporaries,
    safe_name,
    write_result_folder,
)

EXAMPLE = REPO / "examples" / "astronaut.png"
FAST = ["--method", "regress", "--texture-size", "64", "--quiet"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def home(tmp_path):
    """A user's folder: photos/, results/ with their own files, and a file next to them."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "results" / "mine").mkdir(parents=True)
    (tmp_path / "results" / "notes.txt").write_text("keep me")
    (tmp_path / "results" / "mine" / "data.csv").write_text("1,2,3")
    (tmp_path / "precious.txt").write_text("keep me too")
    return tmp_path


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("raw, expected", [
    (".", "image"), ("..", "image"), ("", "image"), ("   ", "image"), ("...", "image"),
    ("../etc", "_etc"), ("a/b", "a_b"), ("a\\b", "a_b"), (".hidden", "hidden"),
    ("tab\tnew\nline", "tab_new_line"), ("nul\x00byte", "nul_byte"), ("con", "con_"),
    ("what?*:<>|\"", "what_______"), ("photo", "photo"), ("Ünïcödé", "Ünïcödé"),
    ("a\x85b", "a_b"), ("a\u2028b", "a_b"), ("evil\u202egpj.exe", "evil_gpj.exe"),
    ("con.txt", "con_.txt"), ("COM1", "COM1_"), ("com¹", "com¹_"),
])
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_safe_name_bounds_length_on_utf8_boundaries():
    name = safe_name("é" * 500)
    assert len(name.encode("utf-8")) <= 120 and set(name) == {"é"}


def test_name_allocator_is_unique_case_insensitive_and_ordered():
    names = NameAllocator()
    got = [names.claim(n) for n in ["photo", "Photo", "photo", "..", ".", "photo-2"]]
    assert got == ["photo", "Photo-2", "photo-3", "image", "image-2", "photo-2-2"]


# --------------------------------------------------------------------------- data loss (end to end)


def test_dot_dot_names_never_delete_user_files(ict_cache, home):
    """`..jpg` (stem '.') and `...jpg` (stem '..') once deleted results/ and its parent."""
    for name in ("..jpg", "...jpg", ".jpg.png"):
        shutil.copy(EXAMPLE, home / "photos" / name)
    before = _snapshot(home)
    code = main(["reconstruct", str(home / "photos"), "--out", str(home / "results"), *FAST])
    assert code == 0
    after = _snapshot(home)
    assert {k: v for k, v in after.items() if k in before} == before  # every file survives
    made = sorted(p.name for p in (home / "results").iterdir())
    assert made == ["image", "image-2", "jpg", "mine", "notes.txt", "results.jsonl"]
    for d in ("image", "image-2", "jpg"):
        assert (home / "results" / d / "mesh.glb").is_file()


def test_same_stem_from_two_folders_gives_two_results(ict_cache, home, capsys):
    (home / "photos" / "a").mkdir()
    (home / "photos" / "b").mkdir()
    shutil.copy(EXAMPLE, home / "photos" / "a" / "photo.png")
    shutil.copy(EXAMPLE, home / "photos" / "b" / "photo.jpg")
    out = home / "results"
    assert main(["reconstruct", str(home / "photos/a/photo.png"), str(home / "photos/b/photo.jpg"),
                 "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "-> " + str(out / "photo") + " " in text and str(out / "photo-2") in text
    p1 = json.loads((out / "photo" / "params.json").read_text())["image"]
    p2 = json.loads((out / "photo-2" / "params.json").read_text())["image"]
    assert p1.endswith("a/photo.png") and p2.endswith("b/photo.jpg")


def test_multi_face_names_do_not_collide_with_a_file_of_that_name(ict_cache, home):
    """bald_guys.jpg --all-faces gives bald_guys_face0..; a file bald_guys_face1.png must not
    overwrite one of them (once: "25 faces", 24 folders)."""
    shutil.copy(FACES_DIR / "bald_guys.jpg", home / "photos" / "bald_guys.jpg")
    shutil.copy(EXAMPLE, home / "photos" / "bald_guys_face1.png")
    out = home / "results"
    existing = list(out.iterdir())
    assert main(["reconstruct", str(home / "photos"), "--out", str(out), "--all-faces", *FAST]) == 0
    folders = [p for p in out.iterdir() if p.is_dir() and p not in existing]
    images = [json.loads((f / "params.json").read_text())["image"] for f in folders]
    n_group = sum(i.endswith("bald_guys.jpg") for i in images)
    assert n_group >= 20 and images.count(str(home / "photos" / "bald_guys_face1.png")) == 1
    assert len(folders) == n_group + 1  # every face has its own folder
    own = json.loads((out / "bald_guys_face1-2" / "params.json").read_text())
    assert own["image"].endswith("bald_guys_face1.png")


def test_rerun_replaces_own_results_but_never_user_files(ict_cache, home, capsys):
    shutil.copy(EXAMPLE, home / "photos" / "astro.png")
    out = home / "results"
    args = ["reconstruct", str(home / "photos" / "astro.png"), "--out", str(out), *FAST]
    assert main(args) == 0
    first = (out / "astro" / "params.json").stat().st_mtime_ns
    time.sleep(0.01)
    assert main(args) == 0  # our own result: replaced atomically
    assert (out / "astro" / "params.json").stat().st_mtime_ns != first
    (out / "astro" / "my_edit.blend").write_text("hours of work")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "my_edit.blend" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "astro" / "my_edit.blend").read_text() == "hours of work"
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "astro" / "my_edit.blend").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_users_results_jsonl_is_never_replaced(ict_cache, home, capsys):
    shutil.copy(EXAMPLE, home / "photos" / "a.png")
    (home / "results" / "results.jsonl").write_text('{"my": "own data"}\n')
    assert main(["reconstruct", str(home / "photos" / "a.png"), "--out", str(home / "results"), *FAST]) == 2
    assert "results.jsonl: exists and was not written by faceclip" in capsys.readouterr().err
    assert (home / "results" / "results.jsonl").read_text() == '{"my": "own data"}\n'
    assert not (home / "results" / "a").exists()


def test_folder_not_written_by_faceclip_is_refused(ict_cache, home, capsys):
    shutil.copy(EXAMPLE, home / "photos" / "mine.png")  # results/mine/ is the user's own folder
    before = _snapshot(home / "results")
    assert main(["reconstruct", str(home / "photos" / "mine.png"), "--out", str(home / "results"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "not created by faceclip" in err
    after = _snapshot(home / "results")
    assert json.loads(after.pop("results.jsonl").splitlines()[1])["status"] == "failed"  # the manifest says so
    assert after == before


def test_out_is_an_existing_file_fails_before_any_work(ict_cache, home, capsys):
    shutil.copy(EXAMPLE, home / "photos" / "a.png")
    target = home / "precious.txt"
    t0 = time.perf_counter()
    assert main(["reconstruct", str(home / "photos" / "a.png"), "--out", str(target), *FAST]) == 2
    assert time.perf_counter() - t0 < 5.0  # refused before loading any model or fitting
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err
    assert target.read_text() == "keep me too"


@pytest.mark.parametrize("extra, message", [
    (["--checkpoint", "x.pt", "--no-regressor"], "contradict"),
    (["--method", "regress", "--no-regressor"], "needs the regressor"),
    (["--init", "regressor", "--no-regressor"], "contradict"),
    (["--texture-size", "3"], "between 16 and 8192"),
    (["--identity", "--fast"], "--fast skips"),
    (["--identity-weight", "-1"], "non-negative"),
    (["--identity", "--method", "regress"], "does not run"),
])
def test_conflicting_flags_are_refused_up_front(tmp_path, capsys, extra, message):
    shutil.copy(EXAMPLE, tmp_path / "a.png")
    assert main(["reconstruct", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "a").exists()


def test_seed_flag_is_gone():
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", "a.png", "--out", "o", "--seed", "3"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- atomic writes, stale temporaries


def test_write_result_folder_is_atomic_and_marks_ownership(tmp_path):
    def write(d: Path) -> None:
        (d / "a.txt").write_text("A")

    files = write_result_folder(tmp_path / "r", write, meta={"image": "x.png"})
    assert [f.name for f in files] == ["a.txt"]
    marker = json.loads((tmp_path / "r" / MARKER_NAME).read_text())
    assert marker["tool"] == "faceclip" and marker["files"] == ["a.txt"] and marker["image"] == "x.png"

    def broken(d: Path) -> None:
        (d / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_result_folder(tmp_path / "r", broken)
    assert (tmp_path / "r" / "a.txt").read_text() == "A"  # the previous result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary left


def test_check_replaceable_rules(tmp_path):
    check_replaceable(tmp_path / "new")  # missing: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a result folder"):
        check_replaceable(tmp_path / "file", overwrite=True)  # never replace a file by a folder
    os.symlink(tmp_path, tmp_path / "link")
    with pytest.raises(OutputError):
        check_replaceable(tmp_path / "link", overwrite=True)
    (tmp_path / "theirs").mkdir()
    check_replaceable(tmp_path / "theirs")  # empty: nothing to lose
    (tmp_path / "theirs" / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not created by faceclip"):
        check_replaceable(tmp_path / "theirs")
    check_replaceable(tmp_path / "theirs", overwrite=True)
    # A result folder written before markers existed (faceclip 0.1.0) is still recognised.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for n in ("mesh.obj", "mesh.glb", "overlay.png"):
        (legacy / n).write_text("x")
    (legacy / "params.json").write_text(json.dumps({"faceclip_version": "0.1.0"}))
    check_replaceable(legacy)
    (legacy / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not created by faceclip"):
        check_replaceable(legacy)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_runs_are_removed_and_others_kept(tmp_path):
    dead = tmp_path / f".faceclip-tmp-{_dead_pid()}-abc"
    dead.mkdir()
    (dead / ".faceclip-in-progress").touch()
    (dead / "mesh.obj").write_text("half")
    alive = tmp_path / f".faceclip-tmp-{os.getppid()}-abc"  # a running process
    alive.mkdir()
    (alive / ".faceclip-in-progress").touch()
    unmarked = tmp_path / f".faceclip-tmp-{_dead_pid()}-user"  # not ours: no marker inside
    unmarked.mkdir()
    assert clean_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and unmarked.exists()


def test_sigkill_mid_write_is_cleaned_by_the_next_run(tmp_path):
    """A run killed while writing leaves a temporary folder; the next run removes it, and a
    previous result it had moved aside is restored."""
    out = tmp_path / "out"
    write_result_folder(out / "astro", lambda d: (d / "a.txt").write_text("old"))
    child = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from faceclip.io.outputs import write_result_folder
        def write(d):
            (d / "a.txt").write_text("new, half written")
            Path({str(tmp_path / 'ready')!r}).touch()
            time.sleep(60)
        write_result_folder(Path({str(out / 'astro')!r}), write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert (tmp_path / "ready").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in out.iterdir() if p.name.startswith(".faceclip-tmp-")]
    assert len(leftovers) == 1
    assert clean_stale_temporaries(out) == leftovers
    assert sorted(p.name for p in out.iterdir()) == ["astro"]
    assert (out / "astro" / "a.txt").read_text() == "old"

    # Killed after moving the previous result aside: it is put back.
    aside = out / f".faceclip-tmp-{_dead_pid()}-old-x"
    aside.mkdir()
    (aside / ".faceclip-in-progress").write_text("astro")
    os.replace(out / "astro", aside / "previous")
    assert clean_stale_temporaries(out) == [aside]
    assert (out / "astro" / "a.txt").read_text() == "old"


def test_overwrite_never_takes_the_working_folder_home_or_folders_of_folders(ict_cache, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("keep me")
    monkeypatch.chdir(project)
    before = _snapshot(project)
    for out in (".", str(project), str(tmp_path)):  # the working folder and one above it
        assert main(["export-mean", "--geometry", "face", "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "never replaces it" in err and "Traceback" not in err
    with pytest.raises(OutputError, match="home folder"):
        check_replaceable(Path.home(), overwrite=True)
    with pytest.raises(OutputError, match="root"):
        check_replaceable(Path("/"), overwrite=True)
    assert _snapshot(project) == before
    other = tmp_path / "other"
    (other / "photos").mkdir(parents=True)
    with pytest.raises(OutputError, match="holds folders"):
        check_replaceable(other, overwrite=True)  # a folder of folders is never a result folder


def test_stale_face_folders_of_the_same_photo_are_removed(tmp_path):
    from faceclip.io.outputs import remove_stale_results

    def result(name, image, extra=None):
        write_result_folder(tmp_path / name, lambda t: (t / "mesh.obj").write_text("v 0 0 0\n"),
                            meta={"image": image, "face_index": 0})
        if extra:
            (tmp_path / name / extra).write_text("mine")

    for name in ("photo", "photo_face0", "photo_face1", "photo_face2"):
        result(name, "in/photo.jpg")
    result("photo_face3", "in/photo.jpg", extra="my_edit.blend")  # the user added a file: kept
    result("photo_face4", "other/photo.jpg")  # another photo with the same stem: kept
    (tmp_path / "photo_faces").mkdir()  # not a face folder name: kept
    (tmp_path / "photo_face9").mkdir()  # the user's own folder: kept
    removed = remove_stale_results(tmp_path, "photo", [tmp_path / "photo_face0", tmp_path / "photo_face1"],
                                   "in/photo.jpg")
    assert sorted(p.name for p in removed) == ["photo", "photo_face2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_face0", "photo_face1", "photo_face3",
                                                         "photo_face4", "photo_face9", "photo_faces"]


def test_output_error_is_a_faceclip_error():
    assert issubclass(OutputError, FaceClipError)


def test_export_mean_never_overwrites_a_users_folder(ict_cache, home, capsys):
    docs = home / "results"  # holds notes.txt and mine/
    before = _snapshot(docs)
    assert main(["export-mean", "--geometry", "face", "--out", str(docs)]) == 2
    assert "not created by faceclip" in capsys.readouterr().err
    assert _snapshot(docs) == before
    mean = home / "mean"
    assert main(["export-mean", "--geometry", "face", "--out", str(mean)]) == 0
    assert main(["export-mean", "--geometry", "face", "--out", str(mean)]) == 0  # its own: replaced
    assert (mean / "mesh.glb").is_file() and (mean / MARKER_NAME).is_file()


def test_complete_result_left_by_a_kill_before_its_rename_is_removed(tmp_path):
    done = tmp_path / f".faceclip-tmp-{_dead_pid()}-xyz"
    done.mkdir()
    (done / "mesh.obj").write_text("complete")
    (done / MARKER_NAME).write_text(json.dumps({"tool": "faceclip", "files": ["mesh.obj"]}))
    assert clean_stale_temporaries(tmp_path) == [done]


def test_previous_result_with_a_long_name_is_restored_after_a_kill(tmp_path):
    name = "a" * 120 + "-2"  # longer than safe_name's bound: suffixes may exceed it
    write_result_folder(tmp_path / name, lambda d: (d / "a.txt").write_text("old"))
    aside = tmp_path / f".faceclip-tmp-{_dead_pid()}-old-x"
    aside.mkdir()
    (aside / ".faceclip-in-progress").write_text(name)
    os.replace(tmp_path / name, aside / "previous")
    assert clean_stale_temporaries(tmp_path) == [aside]
    assert (tmp_path / name / "a.txt").read_text() == "old"
