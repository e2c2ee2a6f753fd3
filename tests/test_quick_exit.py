"""The command's prompt exit: exit handlers still run, output is flushed, the status is kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("code", [0, 2, 130])
def test_leave_now_runs_exit_handlers_flushes_and_keeps_the_status(code):
    res = _python(f"""
        import atexit, sys, tempfile, pathlib
        from faceclip.quick_exit import leave_now
        tmp = tempfile.TemporaryDirectory()  # cleaned up by an exit handler (weakref.finalize)
        pathlib.Path(tmp.name, "x").write_text("x")
        print(tmp.name)
        atexit.register(lambda: print("handler ran"))
        sys.stdout.write("unflushed")  # no newline, no flush
        sys.stderr.write("to stderr")
        leave_now({code})
        print("not reached")
    """)
    assert res.returncode == code, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1:] == ["unflushedhandler ran"] and res.stderr == "to stderr"
    assert not Path(lines[0]).exists()  # the temporary folder was removed


def test_end_promptly_at_exit_runs_later_handlers_and_flushes():
    res = _python("""
        import atexit, sys
        atexit.register(lambda: print("registered before: skipped"))
        from faceclip.quick_exit import end_promptly_at_exit
        end_promptly_at_exit()
        atexit.register(lambda: print("registered after: runs"))
        sys.stdout.write("unflushed")
    """)
    assert res.returncode == 0, res.stderr
    assert "registered after: runs" in res.stdout and "unflushed" in res.stdout
    assert "skipped" not in res.stdout


def test_the_command_exits_with_its_status():
    ok = subprocess.run([sys.executable, "-m", "faceclip.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("faceclip ")
    bad = subprocess.run([sys.executable, "-m", "faceclip.cli", "reconstruct", "/nonexistent/photo.jpg", "--out",
                          "/nonexistent/out"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file" in bad.stderr, bad.stderr


def test_under_a_profiler_the_command_exits_normally_and_the_profile_is_written(tmp_path):
    out = tmp_path / "prof.out"
    res = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "faceclip.cli", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("faceclip "), res.stderr
    assert out.is_file() and out.stat().st_size > 0


def test_a_worker_thread_still_running_is_waited_for():
    res = _python("""
        import threading, time
        from faceclip.quick_exit import leave_now
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
        leave_now(0)
    """)
    assert res.returncode == 0 and "thread done" in res.stdout, res.stderr
