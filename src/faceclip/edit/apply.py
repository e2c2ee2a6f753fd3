"""Edit a reconstructed face's expression and write the edited result folder.

Only the expression coefficients change: identity, head pose, camera, light, albedo and
texture are those of the reconstruction. The steps of one edit, in this order:

1. ``source`` (``--from``): take another result's expression coefficients (transfer);
2. ``text`` (``--text``): the CLIP-guided mapper (:mod:`faceclip.edit.mapper`) when CLIP
   ViT-B/32 weights are installed, else the offline parser (:mod:`faceclip.edit.prompt`);
3. ``expressions`` (``--expression``, in order): named expressions and blendshapes
   (:mod:`faceclip.edit.expressions`);
4. ``strength``: the result is ``w0 + strength * (w - w0)`` from the reconstruction's ``w0``,
   clamped to the model's range.

:func:`edit_result` writes, atomically (a crash leaves no half-written folder): the edited mesh
(``mesh.obj/.mtl/_texture.png``, ``mesh.ply``, ``mesh.glb``), ``params.json`` (the
reconstruction's, with the new expression, the same weights under Apple's 52 ARKit names
(``arkit_blendshapes``), the projected 68 landmarks of the edited face and an ``edit`` record), ``overlay.png`` (the edited face over the photo), ``before_after.png`` and,
with ``animate`` frames, ``animation.gif`` and ``animation.glb`` (the ICT blendshapes as morph
targets with the change as an animation).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from faceclip.edit.expressions import ExpressionEdit, apply_expression, arkit_weights
from faceclip.edit.mapper import TextEditConfig, TextEditObjective, optimise_mapper
from faceclip.edit.prompt import describe, parse_prompt
from faceclip.edit.render import FaceRenderer
from faceclip.edit.result import ResultFace, load_result
from faceclip.errors import FaceClipError, ModelNotInstalledError
from faceclip.io.mesh import MESH_FORMATS, check_formats

#: Frames per second of ``animation.gif`` and ``animation.glb``.
ANIMATION_FPS = 12.0
#: Side of the square crops in ``before_after.png`` and ``animation.gif``.
PANEL_PX = 384


@dataclass(frozen=True)
class EditRequest:
    """What to do to the expression (see the module docstring for the order).

    Attributes:
        expressions: named expressions / blendshapes with strengths.
        text: a prompt, or None.
        source: another result folder whose expression to take, or None.
        strength: overall strength (0: no change, 1: the edit, up to 2: exaggerated).
        animate: frames of the animation from the current to the edited expression (0: none).
        text_config: settings of the CLIP-guided mapper.
        formats: mesh formats to write.
    """

    expressions: tuple[ExpressionEdit, ...] = ()
    text: str | None = None
    source: Path | None = None
    strength: float = 1.0
    animate: int = 0
    text_config: TextEditConfig = TextEditConfig()
    formats: tuple[str, ...] = MESH_FORMATS

    def __post_init__(self) -> None:
        if not self.expressions and not self.text and self.source is None:
            raise FaceClipError("nothing to edit", hint="give --expression NAME, --text PROMPT or --from RESULT_DIR")
        if not 0.0 <= self.strength <= 2.0:
            raise FaceClipError(f"--strength {self.strength}: must be between 0 and 2")
        if self.animate < 0 or self.animate == 1 or self.animate > 600:
            raise FaceClipError(f"--animate {self.animate}: give between 2 and 600 frames")
        if self.text is not None and not self.text.strip():
            raise FaceClipError("--text is empty")
        check_formats(self.formats)


@dataclass
class EditOutcome:
    """The edited coefficients and what was done.

    Attributes:
        base: (1, K) the reconstruction's expression.
        expression: (1, K) the edited expression.
        record: the ``edit`` record of ``params.json``.
        notes: messages for the user (e.g. that the offline parser replaced CLIP).
    """

    base: Tensor
    expression: Tensor
    record: dict
    notes: list[str] = field(default_factory=list)


def value_range(face: ResultFace) -> tuple[float, float]:
    """The expression coefficients' range: [0, 1] for blendshapes, +-3 sigma for PCA models."""
    return (0.0, 1.0) if face.model.expression_range == "blendshape" else (-3.0, 3.0)


def transfer_expression(face: ResultFace, other: ResultFace) -> Tensor:
    """(1, K) ``other``'s expression, for ``face`` (same face model required).

    Raises:
        FaceClipError: the two results use different face models.
    """
    a, b = face.params.get("model", {}), other.params.get("model", {})
    if (a.get("name"), a.get("geometry")) != (b.get("name"), b.get("geometry")) \
            or face.expression_names != other.expression_names:
        raise FaceClipError(f"--from {other.folder}: made with face model {b.get('name')} {b.get('geometry')}, "
                            f"this result with {a.get('name')} {a.get('geometry')}",
                            hint="transfer needs two results of the same face model")
    return other.expression.clone()


_AUTO_CLIP: list = []  # the encoder "auto" loaded, kept for the next edits of this process


def _load_clip(clip):
    """``clip``: "auto" (load if installed), None (never) or an encoder -> (encoder or None, note).

    What "auto" loads is kept, so editing many results loads ViT-B/32 once; a miss is not kept
    (looking again is cheap, and weights installed meanwhile are found)."""
    if clip is None:
        return None, "CLIP not used (offline parser asked for)"
    if clip != "auto":
        return clip, ""
    if _AUTO_CLIP:
        return _AUTO_CLIP[0], ""
    from faceclip.nets.clip_weights import load_clip_image_text

    try:
        _AUTO_CLIP.append(load_clip_image_text())
    except ModelNotInstalledError as exc:
        return None, exc.message
    return _AUTO_CLIP[0], ""


def plan_edit(face: ResultFace, request: EditRequest, clip="auto",
              progress: Callable[[int, dict[str, float]], None] | None = None,
              renderer: FaceRenderer | None = None) -> EditOutcome:
    """Work out the edited expression (nothing is written).

    Args:
        face: the reconstruction.
        request: the edit.
        clip: ``"auto"`` (the CLIP-guided mapper if ViT-B/32 weights are installed, else the
            offline parser), None (always the parser) or a loaded
            :class:`faceclip.nets.clip.ClipImageText`.
        progress: per mapper step (step, losses).
        renderer: the face's :class:`FaceRenderer`, if one was made already.
    """
    names = face.expression_names
    lo, hi = value_range(face)
    base = face.expression.clone()
    # the model's range, widened to the fitted values where those lie outside it (PCA models):
    # a step never moves a coefficient it does not change
    lo_k, hi_k = base.clamp(max=lo), base.clamp(min=hi)

    def clamp(t: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(t, hi_k), lo_k)

    w = base.clone()
    record: dict = {"from_result": str(face.folder), "steps": []}
    notes: list[str] = []
    if request.source is not None:
        other = load_result(request.source, read_photo=False)
        w = transfer_expression(face, other)
        record["steps"].append({"transfer_from": str(request.source)})
    if request.text:
        encoder, why = _load_clip(clip)
        if encoder is None:
            edits = parse_prompt(request.text)
            notes.append(f"CLIP-guided editing unavailable ({why.split(';')[0]}): used the offline prompt parser "
                         f"instead: {request.text!r} -> {describe(edits)} (docs/editing.md)")
            for e in edits:
                w = clamp(torch.tensor([apply_expression(w[0].tolist(), names, e)]))
            record["steps"].append({"text": request.text, "method": "offline_parser",
                                    "parsed": [{"name": e.name, "strength": e.strength} for e in edits]})
        else:
            t0 = time.perf_counter()
            objective = TextEditObjective(renderer or FaceRenderer(face), encoder, request.text, request.text_config,
                                          (lo, hi), start=w)
            result = optimise_mapper(objective, progress=progress)
            w = clamp(result.expression)
            first, last = result.clip_loss_first_last
            record["steps"].append({"text": request.text, "method": "clip_mapper",
                                    "clip_weights": getattr(encoder, "source", ""),
                                    "config": {k: getattr(request.text_config, k) for k in
                                               request.text_config.__dataclass_fields__},
                                    "clip_loss_first": round(first, 6), "clip_loss_last": round(last, 6),
                                    "seconds": round(time.perf_counter() - t0, 2)})
    if request.expressions:
        for e in request.expressions:
            w = clamp(torch.tensor([apply_expression(w[0].tolist(), names, e)]))
        record["steps"].append({"expressions": [{"name": e.name, "strength": e.strength}
                                                for e in request.expressions]})
    final = clamp(base + request.strength * (w - base))
    record["strength"] = request.strength
    record["changed"] = {n: [round(float(a), 6), round(float(b), 6)]
                         for n, a, b in zip(names, base[0], final[0]) if abs(float(a) - float(b)) > 1e-6}
    return EditOutcome(base, final, record, notes)


def before_after(renderer: FaceRenderer, base: Tensor, edited: Tensor, caption: str, size_px: int = PANEL_PX,
                 ) -> np.ndarray:
    """uint8 (S, 3 S, 3): the photo, the reconstruction and the edit, side by side."""
    from faceclip.edit.render import crop_photo, label

    win = renderer.square_window(size_px, torch.cat([base, edited]))
    panels = [label(crop_photo(renderer.face.photo, win), "photo"),
              label(renderer.crop(base, win), "before"),
              label(renderer.crop(edited, win), f"after: {caption}"[:60])]
    return np.concatenate(panels, axis=1)


def write_gif(path: Path, frames: list[np.ndarray], fps: float = ANIMATION_FPS, hold: int = 6) -> Path:
    """Frames (uint8 (H, W, 3)) as a looping GIF; the last frame is shown ``hold`` times longer.

    All frames share one adaptive 256-colour palette (made from the first and last frames, which
    hold every colour the change passes through) with Floyd-Steinberg dithering: no banding on
    skin, no palette flicker from frame to frame.
    """
    from PIL import Image

    both = Image.fromarray(np.concatenate([frames[0], frames[-1]], axis=0))
    palette = both.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for f in frames]
    ms = round(1000 / fps)
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=[ms] * (len(images) - 1) + [ms * hold], optimize=False)
    return path


def animation_weights(base: Tensor, edited: Tensor, frames: int) -> Tensor:
    """(N, K): ``frames`` steps from ``base`` to ``edited`` (both (1, K)), ends included."""
    t = torch.linspace(0, 1, frames).unsqueeze(1)
    return base + t * (edited - base)


def landmarks_2d(face: ResultFace, expression: Tensor) -> np.ndarray:
    """(68, 2) the model's 68 landmark vertices projected into the full-resolution photo."""
    verts = face.vertices(expression)
    lm = face.model.landmarks_3d(verts)  # (1, 68, 3)
    xy = face.camera.project(lm)[0].detach().numpy().astype(np.float64)
    scale = float((face.params.get("working_copy") or {}).get("scale", 1.0) or 1.0)
    return xy / scale


def edited_params(face: ResultFace, outcome: EditOutcome) -> dict:
    """The reconstruction's ``params.json`` with the edited expression and the ``edit`` record."""
    params = copy.deepcopy(face.params)
    for stale in ("loss_terms", "landmark_nme_interocular", "network_points"):
        params.pop(stale, None)  # they describe the fit, not the edited face
    params["expression"] = {n: round(float(x), 6) for n, x in zip(face.expression_names, outcome.expression[0])}
    if face.model.expression_range == "blendshape":  # Apple's 52 names, for ARKit / Live Link rigs
        params["arkit_blendshapes"] = {k: round(v, 6) for k, v in
                                       arkit_weights(outcome.expression[0].tolist(), face.expression_names).items()}
    params["landmarks68_2d"] = np.round(landmarks_2d(face, outcome.expression), 3).tolist()
    params["edit"] = {**outcome.record,
                      "note": "only the expression changed; landmarks68_2d are the 68 model landmark vertices "
                              "of the edited face projected into the photo"}
    return params


@dataclass
class EditReport:
    """What :func:`edit_result` did."""

    folder: Path
    files: list[Path]
    outcome: EditOutcome
    seconds: dict[str, float]


def edited_detail_map(face: ResultFace, outcome: EditOutcome) -> np.ndarray | None:
    """(S, S) the result's displacement map (``reconstruct --detail``) at the edited expression,
    its wrinkles deepened or faded (:mod:`faceclip.fit.dynamic_detail`); None without one."""
    from faceclip.fit.dynamic_detail import split_detail
    from faceclip.io.detail import read_displacement_png

    d = face.params.get("detail")
    if not isinstance(d, dict) or "scale_mm" not in d or "offset_mm" not in d:
        return None  # made without --detail, or its detail fit failed
    path = face.folder / Path(str(d.get("file", "displacement.png"))).name
    if not path.is_file():
        return None
    atlas = read_displacement_png(path, float(d["scale_mm"]), float(d["offset_mm"]))
    names = face.expression_names
    fitted = dict(zip(names, face.expression[0].tolist()))
    edited = dict(zip(names, outcome.expression[0].tolist()))
    return split_detail(face.model, atlas, fitted).at(edited)


def write_edit(face: ResultFace, outcome: EditOutcome, out_dir: Path, request: EditRequest,
               overwrite: bool = False, renderer: FaceRenderer | None = None) -> list[Path]:
    """Write the edited result folder (see the module docstring); returns its files.
    ``renderer``: the face's, if one was made already (one per face is enough)."""
    from PIL import Image

    from faceclip.io.gltf import write_morph_glb
    from faceclip.io.mesh import export_mesh
    from faceclip.io.outputs import write_result_folder

    renderer = renderer or FaceRenderer(face)
    verts = face.vertices(outcome.expression)[0].detach()
    params = edited_params(face, outcome)
    caption = ", ".join(n for n in outcome.record["changed"])[:40] or "unchanged"
    steps = outcome.record["steps"]
    for s in steps:
        if "expressions" in s:
            caption = " + ".join(f"{e['name']}" for e in s["expressions"])
        elif "text" in s:
            caption = repr(s["text"])
        elif "transfer_from" in s:
            caption = f"from {Path(s['transfer_from']).name}"

    from faceclip.fit.detail import write_face_detail

    edited_detail = edited_detail_map(face, outcome)
    if edited_detail is None:
        params.pop("detail", None)  # no detail files in the edited folder
    else:
        from faceclip.io.detail import displacement_params

        params["detail"] = {**params["detail"], **displacement_params(edited_detail),
                            "dynamic": "wrinkles re-scaled for the edited expression (faceclip.fit.dynamic_detail)"}

    def write(tmp: Path) -> None:
        export_mesh(face.model, verts, tmp, texture=face.texture, vertex_colors=face.albedo.numpy(),
                    glb_texture_format="jpeg", formats=request.formats)
        if edited_detail is not None:
            write_face_detail(tmp, face.model, verts, edited_detail, face.texture, request.formats)
        (tmp / "params.json").write_text(json.dumps(params, indent=1))
        Image.fromarray(renderer.overlay(outcome.expression)).save(tmp / "overlay.png", compress_level=1)
        Image.fromarray(before_after(renderer, outcome.base, outcome.expression, caption)).save(
            tmp / "before_after.png", compress_level=1)
        if request.animate:
            frames = animation_weights(outcome.base, outcome.expression, request.animate)
            win = renderer.square_window(PANEL_PX, torch.cat([outcome.base, outcome.expression]))
            write_gif(tmp / "animation.gif", [renderer.crop(frames[i:i + 1], win) for i in range(len(frames))])
            model = face.model
            neutral = model.vertices(face.identity)[0].detach().numpy()
            times = np.arange(len(frames)) / ANIMATION_FPS
            write_morph_glb(tmp / "animation.glb", neutral, model.triangles.numpy(), model.uv.numpy(), face.texture,
                            model.expression_basis_mm.numpy(), face.expression_names,
                            weights=outcome.expression[0].numpy(), times_s=times, frame_weights=frames.numpy())

    meta = {"image": face.params.get("image"), "edited_from": str(face.folder)}
    return write_result_folder(Path(out_dir), write, meta=meta, overwrite=overwrite)


def check_out_dir(src: Path, out: Path) -> None:
    """Refuse writing the edit over a folder it reads (the edited result, ``--from``'s) or one
    containing it."""
    s, o = Path(src).resolve(), Path(out).resolve()
    if o == s or o in s.parents:
        raise FaceClipError(f"--out {out}: would replace {src}, which this edit reads",
                            hint="write the edit to a new folder, e.g. --out edited/")


def edit_result(folder: str | Path, out_dir: str | Path, request: EditRequest, clip="auto",
                overwrite: bool = False, face_model_path: str | Path | None = None,
                progress: Callable[[int, dict[str, float]], None] | None = None) -> EditReport:
    """Edit a ``faceclip reconstruct`` result and write the edited result folder.

    Args:
        folder: the result to edit.
        out_dir: the folder to write (replaced atomically if it is an earlier faceclip result).
        request: the edit.
        clip: see :func:`plan_edit`.
        overwrite: replace ``out_dir`` even if faceclip did not write it.
        face_model_path: the model file of user-provided models (BFM).
        progress: per mapper step.

    Raises:
        FaceClipError: unusable folder, unknown expression, model missing, output refused.
    """
    from faceclip.io.outputs import check_replaceable

    check_out_dir(Path(folder), Path(out_dir))
    if request.source is not None:
        check_out_dir(Path(request.source), Path(out_dir))
    check_replaceable(Path(out_dir), overwrite)  # before any work (again when writing)
    seconds = {}
    t0 = time.perf_counter()
    face = load_result(folder, face_model_path=face_model_path)
    seconds["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    renderer = FaceRenderer(face)
    outcome = plan_edit(face, request, clip=clip, progress=progress, renderer=renderer)
    if face.photo is None:
        outcome.notes.append(f"overlays drawn on a grey canvas: {face.photo_note}")
    seconds["edit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    files = write_edit(face, outcome, Path(out_dir), request, overwrite=overwrite, renderer=renderer)
    seconds["write"] = time.perf_counter() - t0
    return EditReport(Path(out_dir), files, outcome, seconds)
