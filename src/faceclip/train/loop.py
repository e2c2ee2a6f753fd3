"""The training loop: single process, or DDP under ``torchrun``; checkpoints, resume, logs.

Determinism and resume: the images of step ``s`` are a pure function of ``(seed, s)``: global
position ``p = s * B_global + i`` selects sample ``perm_e[p mod n]`` of epoch ``e = p // n``
(``perm_e`` a permutation seeded by ``(seed, e)``) and its augmentation is seeded by ``p``.
A checkpoint stores the model, optimiser, scheduler, grad scaler, step and RNG states, so
``--resume`` continues exactly where the run stopped; checkpoints are written to a temporary
file and renamed, so a run killed at any moment (even SIGKILL) keeps its last checkpoint.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) every process takes its slice of the
global batch and DDP averages the gradients; NCCL on CUDA, gloo on CPU. Only rank 0 writes
checkpoints, logs and grids.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faceclip.errors import FaceClipError, InputError, ModelNotInstalledError
from faceclip.train.config import TrainConfig, save_config
from faceclip.train.data import resize_sample  # noqa: F401 - also importable from here

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    steps_done: int
    last_checkpoint: Path | None
    regressor_path: Path | None  # the final network file: regressor.pt, or landmarks.pt for task: landmarks
    history: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0
    detail_path: Path | None = None  # detail.pt when model.detail is on


# ---------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------- data


def _batch_plan(step: int, batch: int, dist_info: DistInfo, n: int, seed: int) -> list[tuple[int, int]]:
    """(dataset index, augmentation seed) of this process's samples at ``step``."""
    global_batch = batch * dist_info.world
    out = []
    perms: dict[int, Tensor] = {}
    for i in range(dist_info.rank * batch, (dist_info.rank + 1) * batch):
        pos = step * global_batch + i
        epoch = pos // n
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g)
        out.append((int(perms[epoch][pos % n]), seed * 7_919 + pos))
    return out


class _PlannedSamples(torch.utils.data.Dataset):
    """Wraps a dataset: item ``(index, aug_seed)`` -> augmented sample (seeded, worker-safe),
    resized to ``size_px`` when the dataset's crops have another size."""

    def __init__(self, base, augment, size_px: int | None = None) -> None:
        self.base = base
        self.augment = augment
        self.size_px = size_px

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        index, aug_seed = item
        sample = self.base[index]
        if self.augment is not None:
            sample = self.augment(sample, generator=torch.Generator().manual_seed(aug_seed))
        if self.size_px is not None:
            sample = resize_sample(sample, self.size_px)
        return sample


class _Resized(torch.utils.data.Dataset):
    """Plain-index view of a dataset with every sample resized to ``size_px``."""

    def __init__(self, base, size_px: int) -> None:
        self.base, self.size_px = base, size_px

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return resize_sample(self.base[index], self.size_px)


def build_datasets(cfg: TrainConfig, face_model):
    """(train dataset, validation dataset or None, augment or None) from ``cfg.data``."""
    from faceclip.train import data as D

    d = cfg.data
    augment = D.Augment() if d.augment else None  # samples with parameters get colour jitter only
    if d.kind == "synthetic":
        train = D.SyntheticFaceDataset(face_model, n=d.n_train, seed=d.seed, image_px=d.render_px,
                                       framing=D.FramingJitter() if d.augment else None,
                                       cache_dir=d.path, realism=d.realism)
    else:
        train = D.FolderFaceDataset(d.path)
    val = None
    if d.n_val > 0:  # realistic validation faces when training on realistic ones (other sources: same folders)
        val_realism = getattr(train, "realism", None)
        val = D.SyntheticFaceDataset(face_model, n=d.n_val, seed=d.seed + 10_000, image_px=d.render_px,
                                     realism=val_realism.config if val_realism is not None else None)
    if val is not None and d.image_px != d.render_px:
        val = _Resized(val, d.image_px)
    if len(train) == 0:
        raise InputError("the training set is empty")
    return train, val, augment


# ---------------------------------------------------------------------- model, losses


def _identity_loss(cfg: TrainConfig, weights, device):
    if cfg.identity_encoder not in ("facenet", "none"):
        raise InputError(f"unknown identity_encoder {cfg.identity_encoder!r}", hint="use 'facenet' or 'none'")
    if cfg.identity_encoder == "none" or weights.identity <= 0:
        return None  # (a zero-weight term does not load its encoder)
    try:
        from faceclip.losses.identity import IdentityLoss
        from faceclip.nets.facenet_weights import load_facenet

        return IdentityLoss(load_facenet(device=device))
    except ModelNotInstalledError as exc:
        warnings.warn(f"identity loss disabled: {exc.message} ({exc.hint})", stacklevel=2)
        return None


def _clip_loss(cfg: TrainConfig, weights, device):
    if weights.clip <= 0:
        return None
    from faceclip.losses.clip import make_clip_loss
    from faceclip.nets.clip_weights import find_clip_weights

    weights = find_clip_weights(rn50x4=cfg.clip_rn50x4, vitb32=cfg.clip_vitb32)
    return make_clip_loss(weights, device=device)


def build_model(cfg: TrainConfig, face_model):
    from faceclip.nets.regressor import FaceRegressor, config_for_model, load_regressor

    m = cfg.model
    if m.init_checkpoint:
        net = load_regressor(m.init_checkpoint, face_model=face_model)
        return net.train()
    rcfg = config_for_model(face_model, backbone=m.backbone, prm=m.prm, prm_dim=m.prm_dim,
                            prm_local_blocks=m.prm_local_blocks, prm_transformer_layers=m.prm_transformer_layers,
                            prm_heads=m.prm_heads, crop_px=cfg.data.image_px, refine=m.refine or "",
                            msma_dim=m.msma_dim, msma_attribute_dim=m.msma_attribute_dim, msma_blocks=m.msma_blocks)
    return FaceRegressor(rcfg, pretrained=m.pretrained, backbone_weights=m.backbone_weights)


def build_detail_net(cfg: TrainConfig, regressor, face_model):
    """The detail network for ``regressor``'s features and ``face_model``'s UV window."""
    from faceclip.fit.detail import face_uv_window
    from faceclip.nets.detail import DetailNet, DetailNetConfig

    m = cfg.model
    window, mirror_u = face_uv_window(face_model)
    return DetailNet(DetailNetConfig(
        in_features=regressor.refine.out_features, n_expression=face_model.n_expression, map_px=m.detail_map_px,
        code_dim=m.detail_code_dim, base_channels=m.detail_channels, max_mm=m.detail_max_mm,
        face_model=face_model.name, window=(window.u0, window.v0, window.side), mirror_u=mirror_u))


# ---------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _model_record(net: nn.Module) -> dict:
    from faceclip.nets.landmarks import DenseLandmarkNet, landmark_net_record
    from faceclip.nets.regressor import regressor_record

    return landmark_net_record(net) if isinstance(net, DenseLandmarkNet) else regressor_record(net)


def save_checkpoint(path: Path, net: nn.Module, opt, sched, scaler, step: int, cfg: TrainConfig,
                    world_size: int = 1, detail_net: nn.Module | None = None) -> Path:
    """Atomic write of everything needed to resume (``step`` = steps completed); the detail
    network, when trained, under ``"detail"``.

    ``world_size`` (processes of the run) is recorded: the sample plan depends on the global
    batch, so a resume with another number of processes continues with another data order.
    """
    from faceclip.io.files import atomic_path

    state = {"model": _model_record(net), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "step": step, "rng": _rng_state(),
             "config": cfg.to_dict(), "world_size": int(world_size)}
    if detail_net is not None:
        from faceclip.nets.detail import detail_net_record

        state["detail"] = detail_net_record(detail_net)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of checkpoint writes that a killed run left beside ``path``."""
    for tmp in path.parent.glob(f".{path.name}.*"):  # atomic_path's naming
        log.info("removing %s (an interrupted checkpoint write)", tmp)
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"no checkpoint to resume from: {path}", hint="start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint {path}: {exc.__class__.__name__}") from exc


# ---------------------------------------------------------------------- logging


class _Logs:
    """CSV of every term and the learning rate, TensorBoard scalars and images (rank 0)."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int) -> None:
        self.enabled = enabled
        self.csv_path = out_dir / "metrics.csv"
        self.tb = None
        self._fields: list[str] | None = None
        if not enabled:
            return
        if self.csv_path.is_file():
            # Keep the complete rows up to the resumed step: later ones were lost with the
            # stopped run, a row cut by a kill is incomplete, and a fresh start keeps none.
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if _complete_row(r) and int(r["step"]) <= resume_step]
            self._rewrite(rows)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.utils.tensorboard import SummaryWriter
            # Events of later steps left by an earlier run in this folder are hidden.
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is a dependency, but stay usable without it
            log.warning("tensorboard not installed: TensorBoard logs disabled (metrics.csv is still written)")

    def _rewrite(self, rows: list[dict]) -> None:
        if not rows:
            self.csv_path.unlink(missing_ok=True)
            return
        self._fields = list(rows[0])
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields)
            w.writeheader()
            w.writerows(rows)

    def row(self, values: dict) -> None:
        if not self.enabled:
            return
        if self._fields is None:
            if self.csv_path.is_file():
                with open(self.csv_path, newline="") as f:
                    self._fields = next(csv.reader(f), None)
        new = self._fields is None or any(k not in self._fields for k in values)
        if new:
            old = []
            if self.csv_path.is_file():
                with open(self.csv_path, newline="") as f:
                    old = list(csv.DictReader(f))
            self._fields = list(dict.fromkeys([*(self._fields or []), *values]))
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._fields)
                w.writeheader()
                w.writerows(old)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fields).writerow(values)
        if self.tb is not None:
            step = int(values["step"])
            for k, v in values.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, rgb, step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _complete_row(row: dict) -> bool:
    """A CSV row with every field and an integer step (not one cut short by a killed write)."""
    if None in row or any(v is None for v in row.values()):
        return False
    return row.get("step", "").isdigit()


# ---------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) training as configured.

    Args:
        resume: continue from ``out_dir/checkpoints/last.pt``.
        progress: show a progress bar (rank 0).
        stop_after: stop after this many steps of this call (for tests and experiments);
            the schedule still follows ``cfg.steps``.
    """
    from tqdm import tqdm

    from faceclip.facemodel import load_face_model
    from faceclip.reconstruction import RECONSTRUCTION_GEOMETRY
    from faceclip.train.data import collate
    from faceclip.train.objective import LossWeights, TrainingObjective
    from faceclip.train.validate import render_grid, validate

    t_start = time.perf_counter()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise FaceClipError("device cuda requested but CUDA is not available", hint="set device: cpu")
    dist_info = init_distributed(cfg.device)
    device = torch.device(f"cuda:{dist_info.local_rank}" if cfg.device == "cuda" else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoints" / CHECKPOINT_NAME
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    geometry = RECONSTRUCTION_GEOMETRY if cfg.face_model == "ict" else None
    face_model = load_face_model(cfg.face_model, geometry=geometry)
    train_set, val_set, augment = build_datasets(cfg, face_model)
    landmarks_task = cfg.task == "landmarks"
    detail_net = None
    if landmarks_task:
        from faceclip.train.landmark_task import LandmarkObjective, build_landmark_net

        net = build_landmark_net(cfg, face_model, train_set).to(device)
        objective = LandmarkObjective(face_model.to(device), torch.tensor(net.config.vertex_ids),
                                      net.config.crop_px).to(device)
    else:
        net = build_model(cfg, face_model).to(device)
        weights = LossWeights.from_dict(cfg.loss)
        coarse = not cfg.model.detail_only
        objective = TrainingObjective(face_model, weights,
                                      identity_loss=_identity_loss(cfg, weights, device) if coarse else None,
                                      clip_loss=_clip_loss(cfg, weights, device) if coarse else None,
                                      render_px=cfg.render_px, device=device, detail=cfg.model.detail, coarse=coarse)
        if cfg.model.detail:
            from faceclip.nets.detail import RegressorWithDetail

            detail_net = build_detail_net(cfg, net, face_model).to(device)
    # What the optimiser trains: the network, or the network and the detail network together.
    trainable = net if detail_net is None else RegressorWithDetail(net, detail_net, cfg.model.detail_only)
    opt = torch.optim.Adam([p for p in trainable.parameters() if p.requires_grad], lr=cfg.optim.lr,
                           weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.optim.decay_every, gamma=cfg.optim.decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    start = 0
    if resume:
        state = load_checkpoint(ckpt_path)
        net.load_state_dict(state["model"]["state_dict"])
        if detail_net is not None:
            if not isinstance(state.get("detail"), dict):
                raise InputError(f"{ckpt_path} holds no detail network (the run was made without model.detail)",
                                 hint="resume with the run's own config, or start a new run")
            detail_net.load_state_dict(state["detail"]["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start = int(state["step"])
        log.info("resumed from %s at step %d", ckpt_path, start)
        if int(state.get("world_size", dist_info.world)) != dist_info.world:
            log.warning("resuming a run of %d process(es) with %d: the global batch, and so the data order, "
                        "differ from the original run", state["world_size"], dist_info.world)
    elif dist_info.is_main and ckpt_path.is_file():
        log.warning("%s holds a checkpoint: starting a new run over it (use --resume to continue)", out_dir)
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        _remove_stale_temporaries(ckpt_path)
    model = trainable
    if dist_info.world > 1:
        model = nn.parallel.DistributedDataParallel(trainable,
                                                    device_ids=[device.index] if device.type == "cuda" else None)

    planned = _PlannedSamples(train_set, augment, cfg.data.image_px)
    logs = _Logs(out_dir, dist_info.is_main, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    plans = [_batch_plan(s, cfg.batch_size, dist_info, len(train_set), cfg.seed) for s in range(start, end)]
    loader = torch.utils.data.DataLoader(planned, batch_sampler=plans, collate_fn=collate,
                                         num_workers=cfg.num_workers, persistent_workers=False)
    history: list[dict] = []
    validation: dict = {}
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="train",
               disable=not (progress and dist_info.is_main) or None)
    step = start
    t_log, n_img = time.perf_counter(), 0
    trainable.train()
    try:
        for batch in loader:
            batch = batch.to(device)
            images = batch.image
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                output = model(images)
            if landmarks_task:
                params = tuple(o.float() for o in output)
                total, terms, vis = objective(params, images.float(), batch.landmarks_px, batch.skin_mask,
                                              batch.params, batch.params_valid)
            else:
                output, detail_map = output if detail_net is not None else (output, None)
                params = _float_params(output)
                target = batch.params if (batch.params is not None and bool(batch.params_valid.all())) else None
                total, terms, vis = objective(params, images.float(), batch.landmarks_px, batch.skin_mask, target,
                                              detail_map=None if detail_map is None else detail_map.float())
            if not torch.isfinite(total):
                raise FaceClipError(f"training diverged at step {step + 1} (loss {total.item()})",
                                    hint="lower optim.lr, or resume from the last checkpoint")
            backward_and_step(total, trainable, opt, scaler, cfg.optim.grad_clip)
            sched.step()
            step += 1
            n_img += images.shape[0] * dist_info.world
            bar.update(1)
            bar.set_postfix(loss=f"{total.item():.4f}")
            if step % cfg.log_every == 0 or step == end:
                dt = time.perf_counter() - t_log
                row = {"step": step, "lr": opt.param_groups[0]["lr"], "loss": total.item(),
                       **{f"loss_{k}": v.item() for k, v in terms.items()}, "images_per_s": n_img / max(dt, 1e-9)}
                logs.row(row)
                history.append(row)
                t_log, n_img = time.perf_counter(), 0
            if dist_info.is_main and cfg.grid_every and (step % cfg.grid_every == 0 or step == end):
                if landmarks_task:
                    from faceclip.train.landmark_task import landmark_grid

                    grid = landmark_grid(images, vis)
                else:
                    grid = render_grid(objective, images, params, vis)
                _save_png(out_dir / "grids" / f"step{step:07d}.png", grid)
                logs.image("grid", grid, step)
            if dist_info.is_main and val_set is not None and cfg.val_every and (step % cfg.val_every == 0 or step == end):
                if landmarks_task:
                    from faceclip.train.landmark_task import validate_landmarks

                    validation = validate_landmarks(net, objective, val_set, device, batch_size=cfg.batch_size)
                else:
                    validation = validate(trainable, objective, val_set, device, batch_size=cfg.batch_size)
                logs.row({"step": step, **{f"val_{k}": v for k, v in validation.items()}})
                trainable.train()
            if dist_info.is_main and (step % cfg.ckpt_every == 0 or step == end):
                save_checkpoint(ckpt_path, net, opt, sched, scaler, step, cfg, dist_info.world, detail_net)
    finally:
        bar.close()
        logs.close()
    reg_path = detail_path = None
    if dist_info.is_main and step == cfg.steps:
        meta = {"steps": step, "config": cfg.to_dict(), "validation": validation}
        if landmarks_task:
            from faceclip.nets.landmarks import save_landmark_net

            meta["realism"] = train_set.realism.describe() if getattr(train_set, "realism", None) else None
            reg_path = save_landmark_net(net, out_dir / "landmarks.pt", meta=meta)
        else:
            from faceclip.nets.regressor import save_regressor

            reg_path = save_regressor(net, out_dir / "regressor.pt", meta=meta)
            if detail_net is not None:
                from faceclip.nets.detail import save_detail_net

                detail_path = save_detail_net(detail_net, out_dir / "detail.pt", meta=meta)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return TrainResult(out_dir, step, ckpt_path if ckpt_path.is_file() else None, reg_path, history, validation,
                       time.perf_counter() - t_start, detail_path)


def backward_and_step(loss: Tensor, net: nn.Module, opt, scaler, grad_clip: float) -> None:
    """Backward pass, gradient-norm clipping (over ``net``'s parameters) and the optimiser step
    (grad scaler under AMP)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()


def _float_params(params):
    """Network outputs (maybe float16 under autocast) -> float32 FaceParams for the renderer."""
    from dataclasses import replace

    return replace(params, **{k: v.float() for k, v in params.tensors().items()})


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    from faceclip.io.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
