"""Training configuration: dataclasses loaded from YAML (see ``configs/*.yaml``).

Unknown keys are errors (a typo must not silently fall back to a default). Every field has a
default, so a config file only lists what it changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from faceclip.errors import InputError


@dataclass
class DataConfig:
    """Where training images come from.

    Attributes:
        kind: ``"synthetic"`` (rendered ICT faces with ground truth) or ``"folder"`` (a cache
            built by ``faceclip prepare-data PHOTOS --out CACHE``).
        path: the cache folder for ``"folder"``; for ``"synthetic"``, an optional folder where
            rendered samples are kept (rendered once, reused by later epochs and runs).
        n_train: synthetic training faces (indices 0..n_train-1 of the generator's stream).
        n_val: held-out synthetic validation faces (a different seed).
        seed: seed of the synthetic stream.
        augment: shift / scale / rotation / flip / colour jitter (photos); colour jitter only
            on synthetic faces, whose ground truth must stay exact.
    """

    kind: str = "synthetic"
    path: str | None = None
    n_train: int = 2000
    n_val: int = 16
    seed: int = 0
    augment: bool = True
    #: Crop side in pixels fed to the regressor; samples of another size are resampled (the
    #: same field of view), so a network can be trained and run at, e.g., 128 px.
    image_px: int = 224
    #: Side at which synthetic faces are rendered (and cached).
    render_px: int = 224
    #: Photo-realism of synthetic faces (:class:`faceclip.train.realism.RealismConfig` fields,
    #: e.g. ``{backgrounds: photos/no_faces, textures: runs/textures}``), or None for the
    #: plain renders of the benchmark's generator.
    realism: dict | None = None


@dataclass
class ModelConfig:
    """The regressor (see :class:`faceclip.nets.regressor.RegressorConfig`)."""

    backbone: str = "mobilenet_v2"
    pretrained: bool = True
    backbone_weights: str | None = None
    prm: bool = True
    prm_dim: int = 256
    prm_local_blocks: int = 2
    prm_transformer_layers: int = 2
    prm_heads: int = 4
    #: ``"prm"``, ``"msma"`` or ``"none"`` (None: ``"prm"`` if ``prm`` else ``"none"``).
    refine: str | None = None
    msma_dim: int = 128
    msma_attribute_dim: int = 128
    msma_blocks: int = 1
    #: Start from this checkpoint's weights (fine-tuning), or None.
    init_checkpoint: str | None = None
    #: ``task: landmarks`` only: N dense surface points predicted after the 68 landmarks.
    dense_points: int = 250
    #: ``task: landmarks`` only: ``"integral"`` (soft-argmax heatmaps) or ``"fc"`` (regression).
    landmark_head: str = "integral"
    #: Also train the detail network (:mod:`faceclip.nets.detail`: a UV displacement map from
    #: the regressor's features and expression); written to ``detail.pt`` at the end.
    detail: bool = False
    #: Side of the detail map over the face's UV window (a power of two, 8 to 1024).
    detail_map_px: int = 64
    detail_code_dim: int = 128
    detail_channels: int = 128
    #: The map is bounded to +-this many millimetres.
    detail_max_mm: float = 2.0
    #: Freeze the regressor and train the detail network alone (start from a trained regressor
    #: with ``init_checkpoint``); the coarse loss terms are then not computed.
    detail_only: bool = False


@dataclass
class OptimConfig:
    """Adam with step decay: ``lr * decay ** (step // decay_every)``."""

    lr: float = 2e-4
    decay: float = 0.75
    decay_every: int = 5000
    weight_decay: float = 0.0
    grad_clip: float = 10.0


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        out_dir: run folder: checkpoints/, metrics.csv, tensorboard/, grids/, config.yaml.
        steps: optimiser steps in total.
        batch_size: images per step and per process.
        render_px: side of the rendered image used by the losses.
        loss: loss weights (see :class:`faceclip.train.objective.LossWeights`).
        identity_encoder: ``"facenet"`` (the ported FaceNet; disabled with a warning when not
            installed) or ``"none"``.
        clip_rn50x4, clip_vitb32: CLIP weight files (None: look in the usual places; the CLIP
            term is disabled with a warning when they are missing).
        amp: mixed precision (CUDA only; ignored on CPU).
    """

    out_dir: str = "runs/default"
    #: ``"regressor"`` (the FaceCLIP parameter regressor) or ``"landmarks"`` (the dense
    #: landmark network, :mod:`faceclip.train.landmark_task`).
    task: str = "regressor"
    face_model: str = "ict"
    seed: int = 0
    device: str = "cpu"
    steps: int = 1000
    batch_size: int = 8
    num_workers: int = 0
    render_px: int = 224
    amp: bool = True
    log_every: int = 10
    val_every: int = 200
    ckpt_every: int = 100
    grid_every: int = 200
    identity_encoder: str = "facenet"
    clip_rn50x4: str | None = None
    clip_vitb32: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise InputError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {unknown}", hint=f"known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict, where: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig`; unknown keys raise :class:`InputError`."""
    cfg = _build(TrainConfig, values, where)
    from faceclip.train.objective import LossWeights

    try:
        LossWeights.from_dict(cfg.loss)
    except ValueError as exc:
        raise InputError(f"{where}.loss: {exc}") from None
    if cfg.data.kind not in ("synthetic", "folder"):
        raise InputError(f"{where}.data.kind must be 'synthetic' or 'folder', got {cfg.data.kind!r}")
    if cfg.data.kind == "folder" and not cfg.data.path:
        raise InputError(f"{where}.data.path is required for data.kind 'folder'",
                         hint="build the cache with `faceclip prepare-data PHOTOS --out CACHE`")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise InputError(f"{where}: steps and batch_size must be positive")
    if cfg.task not in ("regressor", "landmarks"):
        raise InputError(f"{where}.task must be 'regressor' or 'landmarks', got {cfg.task!r}")
    if cfg.model.landmark_head not in ("integral", "fc"):
        raise InputError(f"{where}.model.landmark_head must be 'integral' or 'fc', got {cfg.model.landmark_head!r}")
    from faceclip.nets.regressor import check_refine

    check_refine(cfg.model.refine, f"{where}.model.refine")
    if cfg.model.detail_only and not cfg.model.detail:
        raise InputError(f"{where}.model.detail_only needs model.detail: true")
    if cfg.model.detail:
        from faceclip.nets.detail import check_map_px

        if cfg.task != "regressor":
            raise InputError(f"{where}.model.detail applies to task: regressor only")
        check_map_px(cfg.model.detail_map_px, f"{where}.model.detail_map_px")
        if not cfg.model.detail_max_mm > 0:
            raise InputError(f"{where}.model.detail_max_mm must be positive, got {cfg.model.detail_max_mm}")
    if cfg.model.dense_points < 1:
        raise InputError(f"{where}.model.dense_points must be at least 1, got {cfg.model.dense_points}")
    if cfg.data.realism is not None:
        from faceclip.train.realism import RealismConfig

        if cfg.data.kind != "synthetic":
            raise InputError(f"{where}.data.realism applies to synthetic faces only (data.kind is {cfg.data.kind!r})")
        if not isinstance(cfg.data.realism, dict):
            raise InputError(f"{where}.data.realism must be a mapping of RealismConfig settings")
        try:
            RealismConfig(**cfg.data.realism)
        except TypeError as exc:
            raise InputError(f"{where}.data.realism: {exc}",
                             hint="see faceclip.train.realism.RealismConfig for the settings") from None
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML config; ``overrides`` (dotted keys, e.g. ``{"optim.lr": 1e-4}``) win."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}", hint="see configs/ for examples")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None
    for key, value in (overrides or {}).items():
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config_from_dict(values, where=str(path))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    from faceclip.io.files import atomic_path

    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
