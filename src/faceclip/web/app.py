"""The web demo behind ``faceclip serve``: photo in, 3D face out, in the browser.

:class:`DemoBackend` does the work without any web framework (and is what the tests call):
it checks an upload, finds its faces, reconstructs the chosen one into the session's own
temporary folder, edits its expression, and zips the result. :func:`build_app` puts a Gradio
page in front of it, and :func:`serve` runs that page.

Safety, by default:

- the server binds ``127.0.0.1`` (another address only when asked: ``--host``);
- uploads are capped in bytes (``max_upload_mb``, refused by the server before any decoding)
  and in pixels (``max_megapixels``, checked before the image is decoded in full); the page
  passes the uploaded file through untouched, and only images are accepted (decoded by
  :func:`faceclip.io.images.load_image`, which refuses anything else with a one-line reason),
  then re-saved as PNG (the upload's own name and type are never used or served);
- every visitor (browser session) has one temporary folder under one root, emptied when a new
  photo comes, and removed ``session_ttl_s`` after its last use (checked whenever a session
  starts) and when the server stops; no folder is served beyond the page's own outputs;
- all work (reconstructions and expression edits) goes through one queue, one job at a time,
  with at most ``queue_size`` waiting, so twenty visitors at once wait their turn instead of
  exhausting memory;
- no public share link, no server-side rendering, no MCP endpoint, no analytics, no web fonts;
- errors reach the page as one line, never a traceback (real bugs are logged with theirs).
"""

from __future__ import annotations

import dataclasses

import json
import logging
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceclip.errors import FaceClipError, InputError

log = logging.getLogger(__name__)

__all__ = ["DemoBackend", "DemoResult", "ServeOptions", "build_app", "serve"]

#: Expressions offered on the page (named expressions of :mod:`faceclip.edit.expressions`).
AS_PHOTOGRAPHED = "as photographed"
PAGE_EXPRESSIONS = (AS_PHOTOGRAPHED, "neutral", "happy", "sad", "surprise", "fear", "anger", "disgust", "contempt", "wink_left",
                    "wink_right", "jaw_open", "pout")
#: Blendshape sliders on the page (ICT names).
PAGE_BLENDSHAPES = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L", "browInnerUp_R", "eyeBlink_L",
                    "eyeBlink_R", "mouthPucker")


@dataclass
class ServeOptions:
    """Settings of :func:`serve` (the ``faceclip serve`` flags)."""

    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_mb: float = 20.0
    max_megapixels: float = 40.0
    session_ttl_s: float = 3600.0
    queue_size: int = 64
    #: Parent of the session folders (default: a new temporary folder, removed at exit).
    root: str | None = None


@dataclass
class DemoResult:
    """One reconstructed face, as the page shows it."""

    folder: Path
    glb: Path
    overlay: Path
    landmarks: Path
    zip: Path
    faces: list[str]
    face_index: int
    seconds: float
    summary: str = ""
    expression: dict[str, float] = field(default_factory=dict)


class DemoBackend:
    """The demo's work, framework-free (see the module docstring)."""

    def __init__(self, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        o = self.options
        if o.max_upload_mb <= 0 or o.max_megapixels <= 0 or o.session_ttl_s <= 0 or o.queue_size < 1:
            raise FaceClipError("upload limits, session lifetime and queue size must be positive")
        self._own_root = o.root is None
        self.root = Path(o.root) if o.root else Path(tempfile.mkdtemp(prefix="faceclip-web-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._recs: dict[tuple[bool, bool], object] = {}  # one pipeline per mode (fast or not, identity term or not)
        self._lock = threading.Lock()  # one reconstruction at a time per process (the fitter keeps state)

    # ------------------------------------------------------------------ sessions

    def new_session(self) -> Path:
        """A fresh session folder (old ones are cleaned first)."""
        self.cleanup()
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.root))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.options.max_upload_mb * 1e6)

    def touch(self, session: Path) -> None:
        """Mark a session used now (recreated if it expired meanwhile)."""
        session = Path(session)
        session.mkdir(parents=True, exist_ok=True)
        (session / ".last-use").write_text(str(time.time()))

    def session_for(self, session: str | Path | None) -> Path:
        """The visitor's folder: theirs if it still exists, else a new one."""
        if session and Path(session).is_dir() and Path(session).parent == self.root:
            return Path(session)
        return self.new_session()

    def cleanup(self, now: float | None = None) -> list[Path]:
        """Remove session folders unused for ``session_ttl_s``; returns them."""
        now = time.time() if now is None else now
        gone = []
        for d in self.root.glob("session-*"):
            try:
                stamp = d / ".last-use"
                last = float(stamp.read_text()) if stamp.is_file() else d.stat().st_mtime
            except (OSError, ValueError):
                continue
            if now - last > self.options.session_ttl_s:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d)
        return gone

    def close(self) -> None:
        """Remove the root folder if the backend made it."""
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ work

    def reconstructor(self, fast: bool, detail: bool | None = None, identity: bool = False):
        """The (cached) photo pipeline, default or ``--fast``, with or without the FaceNet identity
        term (``--identity``): one per mode, whatever the detail switch (detail is a per-face step,
        not a model: ``detail`` sets it on the cached pipeline; call with the lock held).

        Raises:
            InputError: ``identity`` with ``fast`` (the term weighs the photometric stage, which
                the fast mode skips).
        """
        from faceclip.fit.identity import DEFAULT_IDENTITY_WEIGHT
        from faceclip.reconstruction import ReconstructOptions, Reconstructor

        _check_modes(fast, identity)
        key = (bool(fast), bool(identity))
        if key not in self._recs:
            self._recs[key] = Reconstructor(ReconstructOptions(
                fast=key[0], all_faces=True, overwrite=True,
                identity_weight=DEFAULT_IDENTITY_WEIGHT if key[1] else 0.0))
        rec = self._recs[key]
        if detail is not None and rec.options.outputs.detail != bool(detail):
            rec.options = dataclasses.replace(rec.options, detail=bool(detail))
        return rec

    def check_upload(self, path: str | Path) -> Path:
        """Refuse anything but an image within the limits (one-line :class:`InputError`)."""
        from faceclip.io.images import load_image

        p = Path(path)
        if not p.is_file():
            raise InputError("no image was uploaded")
        if p.stat().st_size > self.max_upload_bytes:
            raise InputError(f"the file is larger than {self.options.max_upload_mb:g} MB")
        return p

    def _load_upload(self, path: str | Path) -> np.ndarray:
        """(H, W, 3) uint8 of an upload (images only, pixel cap); messages name no server path."""
        from faceclip.io.images import load_image

        p = self.check_upload(path)
        try:
            return load_image(p, max_pixels=int(self.options.max_megapixels * 1e6), max_bytes=self.max_upload_bytes)
        except InputError as exc:
            raise InputError(exc.message.replace(str(p), "the upload").replace(p.name, "the upload"),
                             hint=exc.hint) from None

    def reconstruct(self, path: str | Path, session: Path, fast: bool = True, face_index: int = 0,
                    detail: bool = False, identity: bool = False) -> DemoResult:
        """Reconstruct face ``face_index`` (largest first) of an uploaded photo into ``session``;
        ``detail``: also the displacement map (the 3D view then shows the normal-mapped mesh);
        ``identity``: fit with the FaceNet identity term (not with ``fast``; about 4 s a face)."""
        from PIL import Image

        _check_modes(fast, identity)  # before the session's earlier result is cleared
        session = Path(session)
        self.touch(session)
        photo = session / "photo.png"
        if Path(path).resolve() != photo.resolve():  # a new photo: decoded by our loader, saved as PNG
            rgb = self._load_upload(path)
            for old in ("results", "edited"):
                shutil.rmtree(session / old, ignore_errors=True)
            Image.fromarray(rgb).save(photo, compress_level=1)
        t0 = time.perf_counter()
        from faceclip.reconstruction import FaceIndexError

        with self._lock:
            rec = self.reconstructor(fast, detail, identity)
            try:
                out = rec.reconstruct_image(photo, session / "results", base="face", faces=[face_index])[0]
            except FaceIndexError as exc:
                raise InputError(f"the photo has {exc.n_faces} faces; face {face_index + 1} does not exist") from None
            except InputError as exc:
                raise InputError(exc.message.replace(str(photo), "the photo"), hint=exc.hint) from None
        seconds = time.perf_counter() - t0
        labels = [f"face {k + 1}" + (" (largest)" if k == 0 else "") for k in range(out.faces_found)]
        return self._package(out.folder, labels, face_index, seconds, photo)

    def _package(self, folder: Path, labels: list[str], face_index: int, seconds: float, photo: Path,
                 expression: dict[str, float] | None = None) -> DemoResult:
        params = json.loads((folder / "params.json").read_text())
        lm_png = self._landmarks_png(photo, params, folder.parent / f"{folder.name}_landmarks.png")
        zip_path = folder.parent / f"{folder.name}.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    z.write(f, f"{folder.name}/{f.name}")
        nme = params.get("landmark_nme_interocular")
        summary = (f"**{labels[face_index]}** of {len(labels)} · {seconds:.1f} s"
                   + (f" · landmark NME {nme:.3f}" if isinstance(nme, (int, float)) else ""))
        return DemoResult(folder, _viewer_glb(folder), folder / "overlay.png", lm_png, zip_path, labels, face_index,
                          seconds, summary, expression or {})

    @staticmethod
    def _landmarks_png(photo: Path, params: dict, out: Path) -> Path:
        import cv2
        from PIL import Image

        from faceclip.io.images import load_image

        rgb = load_image(photo)
        scale = min(1.0, 1024.0 / max(rgb.shape[:2]))
        img = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb.copy()
        r = max(1, int(round(max(img.shape[:2]) / 300)))
        for pts, colour in ((params.get("detected_landmarks68_2d"), (255, 200, 0)), (params.get("landmarks68_2d"),
                                                                                   (0, 220, 255))):
            for x, y in np.asarray(pts or [], np.float64) * scale:
                cv2.circle(img, (int(round(x)), int(round(y))), r, colour, -1, lineType=cv2.LINE_AA)
        Image.fromarray(img).save(out)
        return out

    def edit(self, result: DemoResult, expression: str, strength: float, blendshapes: dict[str, float],
             session: Path) -> Path:
        """The result with another expression: a GLB path.

        ``expression``: ``"as photographed"`` (the fitted expression; the sliders then add to it)
        or a named expression applied with ``strength`` (0-2); then each blendshape with a value
        above 0 is set to that value. Nothing to change: the reconstruction's own GLB.
        """
        from faceclip.edit import EditRequest, ExpressionEdit, edit_result

        session = Path(session)
        if not result.folder.is_dir():
            raise InputError("this session has expired; upload the photo again")
        self.touch(session)
        edits = []
        if expression and expression != AS_PHOTOGRAPHED:
            edits.append(ExpressionEdit.parse(f"{expression}:{float(np.clip(strength, 0, 2)):.3f}"))
        edits += [ExpressionEdit.parse(f"{k}:{float(np.clip(v, 0, 1)):.3f}")
                  for k, v in blendshapes.items() if v and v > 0]
        if not edits:
            return result.glb
        edited = session / "edited"
        shutil.rmtree(edited, ignore_errors=True)  # one edited face per visitor at a time
        out = edited / f"{result.folder.name}-{int(time.time() * 1000)}"
        edit_result(result.folder, out, EditRequest(expressions=tuple(edits), formats=("glb",)), clip=None,
                    overwrite=True)
        return _viewer_glb(out)

    def provenance_markdown(self, fast: bool = True) -> str:
        """Which model files the page uses, with their hashes."""
        rec = self.reconstructor(fast)
        lines = ["| model | file | sha256 |", "|---|---|---|"]
        for k, v in rec.weights_used().items():
            lines.append(f"| {k} | `{Path(str(v['file'])).name}` | `{str(v['sha256'])[:12]}` |")
        return "\n".join(lines)


def _check_modes(fast: bool, identity: bool) -> None:
    """Refuse the identity term with the fast mode (it weighs the photometric stage, which the
    fast mode skips)."""
    if identity and fast:
        raise InputError("the identity term needs the full fit: untick 'fast' to use it")


# ---------------------------------------------------------------------- the page

HOW_IT_WORKS = """**How it works.** MediaPipe's and dlib's detectors find the faces; MediaPipe's 478-point
mesh, calibrated to the ICT-FaceKit face model, gives the landmarks; the model's identity,
expression and pose are fitted to them (Levenberg-Marquardt), then the light and skin colour;
the texture comes from the photo. Everything runs on this computer's CPU; the photo is not
sent anywhere. Expressions are edited with FACS action units or ICT's blendshapes. Code, figures
and the method: the `faceclip` repository (README, docs/web-demo.md)."""


def _viewer_glb(folder: Path) -> Path:
    """The GLB the 3D view shows: the normal-mapped ``mesh_detail.glb`` when there is detail."""
    detailed = folder / "mesh_detail.glb"
    return detailed if detailed.is_file() else folder / "mesh.glb"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FaceClipError):
        return exc.message
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _gradio():
    """Gradio, imported with its usage analytics off (the demo talks to nobody)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    return gr


def build_app(backend: DemoBackend):
    """The Gradio page in front of ``backend`` (a ``gr.Blocks``, not yet launched)."""
    gr = _gradio()

    o = backend.options
    examples = [str(p) for p in _example_photos()]

    def fail(exc: BaseException):
        if isinstance(exc, FaceClipError):
            log.info("web demo: %s", exc.message)
        else:  # a bug: its traceback goes to the server's log, one line to the page
            log.exception("web demo: unexpected error")
        return gr.Error(_one_line(exc), print_exception=False)

    resets = [gr.update(value=AS_PHOTOGRAPHED), gr.update(value=1.0)] + [gr.update(value=0.0)] * len(PAGE_BLENDSHAPES)

    def run(photo, fast, detail, identity, face_label, session, state_faces, new_photo: bool):
        if photo is None:
            raise gr.Error("Upload a photo first.", print_exception=False)
        try:
            folder = backend.session_for(session)
            labels = [] if new_photo else (state_faces or [])
            index = labels.index(face_label) if face_label in labels else 0
            r = backend.reconstruct(folder / "photo.png" if not new_photo and (folder / "photo.png").is_file()
                                    else photo, folder, fast=bool(fast), face_index=index, detail=bool(detail),
                                    identity=bool(identity))
        except Exception as exc:  # noqa: BLE001 - every failure is one line on the page
            raise fail(exc) from None
        return (str(r.glb), str(r.overlay), str(r.landmarks), str(r.zip), r.summary,
                gr.update(choices=r.faces, value=r.faces[r.face_index], interactive=len(r.faces) > 1),
                str(folder), r.faces, r, *resets)

    def on_upload(photo, fast, detail, identity, session):
        """A new photo: the largest face."""
        return run(photo, fast, detail, identity, None, session, None, True)

    def on_reconstruct(photo, fast, detail, face_label, identity, session, state_faces):
        """The same photo again (another face, a switch changed): the chosen face."""
        return run(photo, fast, detail, identity, face_label, session, state_faces, state_faces is None)

    def on_expression(result, expression, strength, session, *values):
        if result is None:
            return gr.update()
        try:
            glb = backend.edit(result, expression, strength, dict(zip(PAGE_BLENDSHAPES, values)), Path(session))
        except Exception as exc:  # noqa: BLE001
            raise fail(exc) from None
        return str(glb)

    with gr.Blocks(title="FaceCLIP: 3D face from one photo", delete_cache=(600, int(o.session_ttl_s)),
                   analytics_enabled=False) as demo:
        gr.Markdown("# FaceCLIP: a 3D face from one photo\nUpload a photo (or use the webcam); the face "
                    "appears in 3D. Drag to turn it; pick another face; change its expression; download the "
                    "files (OBJ, PLY, GLB, texture, params.json).")
        session = gr.State(None)
        faces_state = gr.State(None)
        result_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                # image_mode=None: the uploaded file reaches the backend untouched (Gradio does not
                # decode and convert it; our loader does, with the pixel cap).
                photo = gr.Image(type="filepath", sources=["upload", "webcam"], label="Photo", image_mode=None,
                                 elem_id="photo")
                fast = gr.Checkbox(value=True, label="fast (about 3x faster; landmarks and light only)")
                detail = gr.Checkbox(value=False, label="detail (wrinkles from the photo's shading; about 1 s more)",
                                     elem_id="detail")
                identity = gr.Checkbox(value=False, elem_id="identity",
                                       label="identity term (shapes more true to the person; about 4 s a face; "
                                             "untick fast)")
                face = gr.Dropdown(choices=[], label="Face", interactive=False, elem_id="face-picker")
                go = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
                gr.Examples(examples=examples, inputs=photo)
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                model3d = gr.Model3D(label="3D face (drag to turn)", clear_color=(0.95, 0.95, 0.95, 1.0),
                                     height=420, elem_id="model3d")
                with gr.Row():
                    overlay = gr.Image(label="Fit over the photo", type="filepath", interactive=False)
                    landmarks = gr.Image(label="Landmarks (yellow: detected, blue: model)", type="filepath",
                                         interactive=False)
                download = gr.File(label="All result files (zip)", elem_id="download")
        with gr.Accordion("Expression", open=True):
            with gr.Row():
                expression = gr.Dropdown(choices=list(PAGE_EXPRESSIONS), value=AS_PHOTOGRAPHED,
                                         label="Named expression")
                strength = gr.Slider(0, 2, value=1, step=0.05, label="Strength")
            sliders = [gr.Slider(0, 1, value=0, step=0.05, label=name) for name in PAGE_BLENDSHAPES]
        with gr.Accordion("How it works, and the model files", open=False):
            gr.Markdown(HOW_IT_WORKS)
            gr.Markdown("Model files of the fast path:\n\n" + backend.provenance_markdown())
        outputs = [model3d, overlay, landmarks, download, summary, face, session, faces_state, result_state,
                   expression, strength, *sliders]
        work = {"concurrency_limit": 1, "concurrency_id": "work"}  # one job at a time, edits included
        photo.upload(on_upload, [photo, fast, detail, identity, session], outputs, api_name="reconstruct", **work)
        # The identity switch comes last among the visible inputs: older clients' calls keep their order.
        go.click(on_reconstruct, [photo, fast, detail, face, identity, session, faces_state], outputs,
                 api_name="reconstruct_again", **work)
        face.input(on_reconstruct, [photo, fast, detail, face, identity, session, faces_state], outputs,
                   api_name="pick_face", **work)
        for control in [expression, strength, *sliders]:
            control.input(on_expression, [result_state, expression, strength, session, *sliders], model3d,
                          trigger_mode="always_last", api_visibility="private", **work)
    demo.queue(max_size=o.queue_size, default_concurrency_limit=1)
    return demo


def _example_photos() -> list[Path]:
    from faceclip.api import example_image

    try:
        return [example_image()]
    except FaceClipError:
        return []


def serve(options: ServeOptions | None = None, *, block: bool = True):
    """Start the demo (``faceclip serve``); returns ``(demo, url)`` when ``block`` is False.

    Raises:
        FaceClipError: the port cannot be used.
    """
    backend = DemoBackend(options)
    o = backend.options
    try:
        demo = build_app(backend)
        demo._faceclip_backend = backend  # noqa: SLF001 - lets callers (tests) clean up
        gr = _gradio()
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts fetched
                                  font_mono=["ui-monospace", "monospace"])
        try:
            _, url, _ = demo.launch(server_name=o.host, server_port=o.port, max_file_size=backend.max_upload_bytes,
                                    show_error=True, prevent_thread_lock=not block, quiet=True, theme=theme,
                                    footer_links=[], share=False, ssr_mode=False, mcp_server=False)
        except OSError as exc:
            raise FaceClipError(f"cannot serve on {o.host}:{o.port} ({exc})",
                                hint="another program uses the port: pass --port") from exc
    except BaseException:
        backend.close()
        raise
    if block:  # launch() returned: the server stopped (Ctrl-C, SIGTERM via the CLI)
        backend.close()
    return demo, url
