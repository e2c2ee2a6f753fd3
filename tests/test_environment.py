"""The installed environment is exactly the committed lock (issue: reproducible install).

CI installs from ``requirements-test.lock``; these tests fail when the environment drifts from
it (an unpinned package, another version) or when a lock no longer satisfies pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
TEST_LOCK = ROOT / "requirements-test.lock"
RUNTIME_LOCK = ROOT / "requirements.lock"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_env", ROOT / "tools" / "check_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check_env = _load_checker()


def test_installed_environment_matches_the_test_lock():
    lock = check_env.parse_lock(TEST_LOCK.read_text())
    problems = check_env.differences(lock, check_env.installed())
    assert problems == [], "\n".join(problems)


def test_check_env_script_exits_non_zero_on_drift(tmp_path):
    lock = TEST_LOCK.read_text().replace("\npytest==", "\npytest==0.0.1  # drift\n#")
    drifted = tmp_path / "drift.lock"
    drifted.write_text(lock)
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "check_env.py"), str(drifted)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "pytest: installed" in res.stderr and "the lock pins 0.0.1" in res.stderr
    ok = subprocess.run([sys.executable, str(ROOT / "tools" / "check_env.py"), str(TEST_LOCK)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_differences_reports_each_kind_of_drift():
    lock = {"numpy": "2.4.6", "scipy": "1.17.1", "trimesh": "5.2.0"}
    env = {"numpy": "2.4.6", "scipy": "1.16.0", "opencv-python-headless": "5.1.0.95",
           "pip": "23.2.1", "faceclip": "0.1.0"}
    assert check_env.differences(lock, env) == [
        "opencv-python-headless==5.1.0.95 is installed but not pinned in the lock",
        "trimesh==5.2.0 is pinned in the lock but not installed",
        "scipy: installed 1.16.0, the lock pins 1.17.1",
    ]
    assert check_env.differences(lock, {**lock, "pip": "26.0"}) == []


def test_parse_lock_refuses_loose_requirements():
    assert check_env.parse_lock("Open_CLIP.torch==3.3.0 \\\n    --hash=sha256:ab\n# c\n") == {
        "open-clip-torch": "3.3.0"}
    with pytest.raises(ValueError, match="not an exact pin"):
        check_env.parse_lock("numpy>=1.24\n")


@pytest.mark.parametrize("lock_path", [RUNTIME_LOCK, TEST_LOCK], ids=["runtime", "test"])
def test_lock_satisfies_pyproject(lock_path):
    """Every dependency in pyproject.toml is pinned, within its range (else: run tools/lock.sh)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    if lock_path == TEST_LOCK:
        wanted += [req for extra in ("test", "docs", "ray") for req in project["optional-dependencies"][extra]]
    pins = check_env.parse_lock(lock_path.read_text())
    for spec in wanted:
        req = Requirement(spec)
        name = check_env.normalise(req.name)
        assert name in pins, f"{req.name} is missing from {lock_path.name}: run tools/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock_path.name} pins {name}=={pins[name]}, outside {spec!r}: run tools/lock.sh")


def test_runtime_lock_agrees_with_test_lock():
    runtime = check_env.parse_lock(RUNTIME_LOCK.read_text())
    test = check_env.parse_lock(TEST_LOCK.read_text())
    assert set(runtime) < set(test)
    assert {k: test[k] for k in runtime} == runtime
    assert runtime["torch"] == "2.13.0+cpu" and runtime["torchvision"] == "0.28.0"
    # OpenCV 5.0: the FaceNet port's reference (dnn.readNetFromTensorflow) is gone in 5.1, and
    # 4.10-4.14 cannot import the FaceNet graph (graph_simplifier assertion).
    assert runtime["opencv-python-headless"].startswith("5.0.")


def test_every_pin_carries_a_hash():
    for path in (RUNTIME_LOCK, TEST_LOCK):
        blocks = [b for b in path.read_text().split("\n") if "==" in b and not b.startswith("#")]
        text = path.read_text()
        for line in blocks:
            start = text.index(line)
            assert "--hash=sha256:" in text[start:start + len(line) + 120], (path.name, line)


def test_render_benchmark_without_deodr_says_so_and_fails():
    """The runtime environment has no DEODR: the benchmark must not print `nan` as its headline."""
    code = ("import sys, runpy; sys.modules['deodr'] = None; sys.argv = ['render.py', '--runs', '1']; "
            f"runpy.run_path({str(ROOT / 'benchmarks' / 'render.py')!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "DEODR is not installed" in res.stderr and "--skip-deodr" in res.stderr
    assert "nan" not in res.stdout
