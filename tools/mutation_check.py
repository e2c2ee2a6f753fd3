#!/usr/bin/env python
"""Targeted mutation check: do the tests catch deliberate bugs in the numerical cores?

Each mutation in :data:`MUTATIONS` replaces one exact snippet of ``src/faceclip`` (a batch sum
for a mean, a halved distance, a skipped protocol step, a wrong constant...). For each one, this
script copies ``src/`` to a temporary folder, applies the mutation there (the working tree is
never edited), runs the mutation's covering tests against the copy (``PYTHONPATH`` puts the copy
ahead of the editable install) and records:

- ``killed``: the covering tests fail (what we want),
- ``survived``: they all pass (a hole in the tests, or an equivalent mutation),
- ``timeout``: they ran past ``--timeout`` (counted as killed, reported separately).

The covering tests are first run once on the unmutated copy (per distinct test selection); a
selection that fails there is reported as ``baseline-failed`` and its mutations are not scored.
The score is ``killed / scored``. On demand only, not part of CI (it takes 10-20 minutes on a
2-core machine for the whole list).

Usage (from the repository root)::

    .venv/bin/python tools/mutation_check.py                 # every mutation
    .venv/bin/python tools/mutation_check.py --list          # names and covering tests
    .venv/bin/python tools/mutation_check.py realy_nonrigid_dropped photometric_batch_sum
    .venv/bin/python tools/mutation_check.py --area losses --timeout 300 --json out.json

Exit status: 0 when every scored mutation is killed, 1 when some survive, 2 on usage errors
(unknown name, a snippet not found exactly once in the source: the list must follow the code).

Why not mutmut: mutmut 3 first runs and profiles the whole test suite (tens of minutes here)
and then thousands of generated mutants over ``render/``, ``losses/`` and ``evaluate/``, most
of them in logging, error messages and argument plumbing; a curated list of mutations that
model real mistakes in the maths, each with the tests meant to catch it, fits in 20 minutes
and says which guarantee is missing when one survives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: replace ``old`` (exactly one occurrence) by ``new`` in ``path``.

    Attributes:
        name: short identifier.
        area: ``losses``, ``evaluate``, ``render`` or ``nets``.
        path: file relative to ``src/faceclip``.
        old, new: the snippet and its replacement.
        tests: pytest arguments selecting the covering tests (files, node ids, ``-k``).
        why: what kind of real mistake it models.
    """

    name: str
    area: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


_LOSS_TESTS = ("tests/test_losses.py", "tests/test_losses_batch.py")
_REALY_TESTS = tuple(f"tests/test_eval_protocols.py::test_realy_{name}" for name in (
    "identical_moved_scaled_and_retriangulated_give_zero", "known_displacement_shows_in_that_region_only",
    "mean_face_scores_its_measured_values", "nonrigid_step_changes_the_correspondences_by_its_measured_amount"))
_SYNTHETIC_MEAN_FACE = "tests/test_eval_synthetic.py::test_benchmark_perfect_method_scores_zero_and_mean_face_does_not"
_PROTOCOL_TESTS = ("tests/test_eval_protocols.py", "tests/test_eval_geometry.py")

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ losses
    Mutation("photometric_batch_sum", "losses", "losses/photometric.py",
             "torch.zeros_like(num)).mean()", "torch.zeros_like(num)).sum()",
             _LOSS_TESTS + ("tests/test_train_objective.py", "-k", "not gradients"),
             "sum instead of mean over the batch"),
    Mutation("photometric_pooled_ratio", "losses", "losses/photometric.py",
             "return torch.where(den > 0, num / den.clamp_min(1.0), torch.zeros_like(num)).mean()",
             "return num.sum() / den.sum().clamp_min(1.0)",
             _LOSS_TESTS, "one ratio pooled over the batch instead of a per-image ratio"),
    Mutation("landmark_batch_sum", "losses", "losses/landmark.py",
             "return per.mean()", "return per.sum()", _LOSS_TESTS, "sum instead of mean over the batch"),
    Mutation("landmark_scale_not_squared", "losses", "losses/landmark.py",
             "/ weights.sum(-1) / scale**2", "/ weights.sum(-1) / scale", _LOSS_TESTS,
             "normaliser applied once to a squared distance"),
    Mutation("landmark_weights_not_normalised", "losses", "losses/landmark.py",
             "per = (weights * d2).sum(-1) / weights.sum(-1) / scale**2",
             "per = (weights * d2).sum(-1) / weights.shape[-1] / scale**2", _LOSS_TESTS,
             "weighted mean divided by the count instead of the weight sum"),
    Mutation("coefficient_l2_batch_sum", "losses", "losses/regularizers.py",
             "return sq.sum(-1).mean()", "return sq.sum()", _LOSS_TESTS, "sum instead of mean over the batch"),
    Mutation("albedo_symmetry_batch_sum", "losses", "losses/regularizers.py",
             "return ((a - b) ** 2).sum(-1).mean()", "return ((a - b) ** 2).sum(-1).mean(-1).sum()",
             _LOSS_TESTS, "mean over vertices but sum over the batch"),
    Mutation("albedo_skin_prior_batch_sum", "losses", "losses/regularizers.py",
             "return ((out**2).sum(-1) + order**2).mean()", "return ((out**2).sum(-1) + order**2).sum()",
             _LOSS_TESTS, "sum instead of mean over the batch"),
    Mutation("light_chroma_batch_sum", "losses", "losses/regularizers.py",
             ".sum((-1, -2)).mean()", ".sum()", _LOSS_TESTS, "sum instead of mean over the batch"),
    Mutation("identity_batch_sum", "losses", "losses/identity.py",
             "dim=1, eps=eps)).mean()", "dim=1, eps=eps)).sum()",
             ("tests/test_losses_batch.py", "tests/test_losses_identity.py"), "sum instead of mean over the batch"),
    Mutation("identity_encoder_not_frozen_in_train", "losses", "losses/identity.py",
             "self.encoder.eval()  # frozen", "pass  # frozen",
             ("tests/test_losses_batch.py", "tests/test_losses_identity.py"),
             "frozen encoder's batch norm switched to training statistics"),
    Mutation("clip_geometric_batch_sum", "losses", "losses/clip.py",
             "total = total + w * rms.mean()", "total = total + w * rms.sum()",
             ("tests/test_losses_batch.py", "tests/test_losses_clip.py", "-k", "not gradient_reaches"),
             "sum instead of mean over the batch"),
    Mutation("clip_semantic_batch_sum", "losses", "losses/clip.py",
             "dim=-1, eps=eps)).mean()", "dim=-1, eps=eps)).sum()",
             ("tests/test_losses_batch.py", "tests/test_losses_clip.py", "-k", "not gradient_reaches"),
             "sum instead of mean over the batch"),
    Mutation("clip_semantic_weight_ignored", "losses", "losses/clip.py",
             "self.semantic_weight * semantic", "semantic",
             ("tests/test_losses_batch.py", "tests/test_losses_clip.py", "-k", "not gradient_reaches"),
             "a term's weight dropped"),
    # ------------------------------------------------------------------ evaluate
    Mutation("realy_nonrigid_dropped", "evaluate", "evaluate/realy.py",
             "corr2 = closest_on_moved_pred(deformed)", "corr2 = corr", _REALY_TESTS,
             "bidirectional (non-rigid) step skipped: rigid closest points only"),
    Mutation("realy_distance_halved", "evaluate", "evaluate/realy.py",
             "axis=1).mean()) * gt.unit_mm", "axis=1).mean()) * gt.unit_mm * 0.5",
             _REALY_TESTS + (_SYNTHETIC_MEAN_FACE,),
             "distance off by a factor (unit or scale mistake)"),
    Mutation("realy_distance_doubled", "evaluate", "evaluate/realy.py",
             "axis=1).mean()) * gt.unit_mm", "axis=1).mean()) * gt.unit_mm * 2.0", _REALY_TESTS,
             "distance off by a factor (unit or scale mistake)"),
    Mutation("realy_nonrigid_keypoints_to_gt", "evaluate", "evaluate/realy.py",
             "keypoint_target=T.apply(pk_g[nonrigid_kp])", "keypoint_target=gk[nonrigid_kp]", _REALY_TESTS,
             "non-rigid keypoints pinned to the ground truth's own keypoints"),
    Mutation("realy_no_region_keypoints", "evaluate", "evaluate/realy.py",
             "keypoint_weight=rate / step", "keypoint_weight=0.0", _REALY_TESTS,
             "regional rigid ICP without the region's keypoint pairs"),
    Mutation("nicp_stiffness_halved", "evaluate", "evaluate/nicp.py",
             "alpha: float = 50.0", "alpha: float = 25.0",
             _REALY_TESTS + ("tests/test_eval_geometry.py",), "REALY's non-rigid stiffness changed"),
    Mutation("now_distance_unscaled", "evaluate", "evaluate/now.py",
             "return NowResult(dist * T.scale, T, keep)", "return NowResult(dist, T, keep)",
             _PROTOCOL_TESTS, "distances left in the prediction's units"),
    Mutation("micc_distance_unscaled", "evaluate", "evaluate/micc.py",
             "d_gt = d_gt * T.scale", "d_gt = d_gt", _PROTOCOL_TESTS, "distances left in the prediction's units"),
    Mutation("micc_crop_radius", "evaluate", "evaluate/micc.py",
             "MICC_CROP_RADIUS_MM = 95.0", "MICC_CROP_RADIUS_MM = 100.0", _PROTOCOL_TESTS,
             "benchmark crop radius changed"),
    Mutation("nme_inner_eye_corners", "evaluate", "evaluate/nme.py",
             "a, b = OUTER_EYE_CORNERS_68", "a, b = (39, 42)", ("tests/test_eval_geometry.py",),
             "inter-ocular normaliser on the inner eye corners"),
    Mutation("facescape_cd_halved", "evaluate", "evaluate/facescape.py",
             "return FaceScapeResult(cd, ", "return FaceScapeResult(cd * 0.5, ", _PROTOCOL_TESTS,
             "chamfer distance off by a factor"),
    # ------------------------------------------------------------------ render
    Mutation("sh_band2_constant", "render", "render/shading.py",
             "_A[2] * _C[2] * 0.5 / math.sqrt(3.0), -_A[2] * _C[2],",
             "_A[2] * _C[2] * 0.5, -_A[2] * _C[2],", ("tests/test_render_rasterize.py", "-k", "sh or shaded"),
             "wrong spherical-harmonics normalisation constant"),
    Mutation("face_normal_flipped_z", "render", "render/shading.py",
             "ax * by - ay * bx], dim=-1)", "ay * bx - ax * by], dim=-1)",
             ("tests/test_render_rasterize.py", "tests/test_render_numba.py"),
             "one component of the cross product with the wrong sign"),
    Mutation("camera_cx_for_cy", "render", "render/camera.py",
             "y = self.fy[:, None] * points_cam[..., 1] / z + self.cy[:, None]",
             "y = self.fy[:, None] * points_cam[..., 1] / z + self.cx[:, None]",
             ("tests/test_render_rasterize.py",), "principal point x used for y (only shows on non-square images)"),
    # ------------------------------------------------------------------ nets (the shipped regressor)
    Mutation("regressor_identity_halved", "nets", "nets/regressor.py",
             'identity=raw["identity"] * s["identity"],', 'identity=raw["identity"] * s["identity"] * 0.5,',
             ("tests/test_shipped_regressor.py", "-k", "beats"),
             "decoded identity scaled down: a worse regressor that still beats the mean face"),
    Mutation("regressor_identity_ignored", "nets", "nets/regressor.py",
             'identity=raw["identity"] * s["identity"],', 'identity=raw["identity"] * 0.0,',
             ("tests/test_shipped_regressor.py", "-k", "beats"),
             "identity head ignored (mean identity): still barely beats the mean face"),
)


# ---------------------------------------------------------------------------------------------


def _env(copy_src: Path, ict_cache: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy_src)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if ict_cache is not None:
        env["FACECLIP_TEST_ICT_CACHE"] = str(ict_cache)
    return env


def _pytest(python: str, tests: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[str, float, str]:
    """Run the tests; returns (``pass`` / ``fail`` / ``timeout``, seconds, output tail)."""
    cmd = [python, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=", *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", time.monotonic() - t0, out[-800:]
    dt = time.monotonic() - t0
    tail = (proc.stdout + proc.stderr)[-1500:]
    if proc.returncode == 0:
        return "pass", dt, tail
    if proc.returncode == 5:
        raise SystemExit(f"no tests collected for {tests}: fix the mutation's test selection\n{tail}")
    return "fail", dt, tail


def _build_ict_cache(python: str, workdir: Path) -> Path | None:
    """Convert the ICT model once (the tests would otherwise do it in every run, ~10 s)."""
    existing = os.environ.get("FACECLIP_TEST_ICT_CACHE")
    if existing and Path(existing).is_file():
        return Path(existing)
    archive = REPO.parent / "shared" / "data" / "ict-facekit.tar.xz"
    if not archive.is_file():
        return None
    home = workdir / "ict_home"
    code = ("from pathlib import Path; from faceclip.facemodel.registry import install_model, cache_path; "
            f"install_model('ict', source=Path({str(archive)!r})); print(cache_path('ict'))")
    proc = subprocess.run([python, "-c", code], cwd=REPO, env={**os.environ, "FACECLIP_HOME": str(home)},
                          capture_output=True, text=True)
    path = Path(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None
    return path if path is not None and path.is_file() else None


def _check_snippets(mutations: list[Mutation]) -> None:
    bad = []
    for m in mutations:
        text = (SRC / "faceclip" / m.path).read_text()
        n = text.count(m.old)
        if n != 1:
            bad.append(f"{m.name}: {m.old!r} occurs {n} times in src/faceclip/{m.path}")
    if bad:
        print("stale mutations (update MUTATIONS to follow the code):\n  " + "\n  ".join(bad), file=sys.stderr)
        raise SystemExit(2)


def run(mutations: list[Mutation], python: str, timeout: float, verbose: bool) -> list[dict]:
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="faceclip-mutation-") as tmp:
        work = Path(tmp)
        copy_src = work / "src"
        shutil.copytree(SRC, copy_src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        ict = _build_ict_cache(python, work)
        env = _env(copy_src, ict)
        where = subprocess.run([python, "-c", "import faceclip; print(faceclip.__file__)"], env=env, cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy_src)):
            raise SystemExit(f"the tests would not import the mutated copy (faceclip from {where!r})")
        baseline: dict[tuple[str, ...], str] = {}
        for m in mutations:
            if m.tests not in baseline:
                status, dt, tail = _pytest(python, m.tests, env, timeout)
                baseline[m.tests] = status
                print(f"[baseline] {' '.join(m.tests)}: {status} ({dt:.0f} s)", flush=True)
                if status != "pass":
                    print(tail, flush=True)
            if baseline[m.tests] != "pass":
                results.append({**asdict(m), "result": "baseline-failed", "seconds": 0.0})
                continue
            target = copy_src / "faceclip" / m.path
            original = target.read_text()
            target.write_text(original.replace(m.old, m.new, 1))
            try:
                status, dt, tail = _pytest(python, m.tests, env, timeout)
            finally:
                target.write_text(original)
            result = {"pass": "survived", "fail": "killed", "timeout": "timeout"}[status]
            failed = [line.split(" - ")[0][len("FAILED "):] for line in tail.splitlines() if line.startswith("FAILED ")]
            results.append({**asdict(m), "result": result, "seconds": round(dt, 1), "failed": failed})
            print(f"[{result:>8}] {m.name} ({dt:.0f} s): {m.why}" + (f"\n           by {failed[0]}" if failed else ""),
                  flush=True)
            if verbose or result == "survived":
                print("   " + tail.strip().splitlines()[-1] if tail.strip() else "", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--area", choices=sorted({m.area for m in MUTATIONS}), action="append",
                    help="only these areas (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)")
    ap.add_argument("--python", default=sys.executable, help="interpreter with the test dependencies")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown mutations {unknown}; see --list", file=sys.stderr)
        return 2
    selected = [known[n] for n in args.names] if args.names else list(MUTATIONS)
    if args.area:
        selected = [m for m in selected if m.area in args.area]
    if args.list:
        for m in selected:
            print(f"{m.name:40s} {m.area:9s} src/faceclip/{m.path}: {m.why}\n{'':40s} tests: {' '.join(m.tests)}")
        return 0
    _check_snippets(selected)
    t0 = time.monotonic()
    results = run(selected, args.python, args.timeout, args.verbose)
    scored = [r for r in results if r["result"] != "baseline-failed"]
    killed = [r for r in scored if r["result"] in ("killed", "timeout")]
    survived = [r["name"] for r in scored if r["result"] == "survived"]
    print(f"\nkilled {len(killed)} / {len(scored)} scored ({len(results) - len(scored)} not scored: baseline failed)"
          f"; survived: {', '.join(survived) or 'none'}; {time.monotonic() - t0:.0f} s")
    score = len(killed) / len(scored) if scored else float("nan")
    if args.json:
        args.json.write_text(json.dumps({"score": score, "results": results}, indent=2))
    print(f"mutation_score: {score:.3f}")
    return 0 if not survived and scored else 1


if __name__ == "__main__":
    sys.exit(main())
