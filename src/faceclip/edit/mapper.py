"""Text-guided expression editing: FaceCLIP's mapper, optimised for one prompt.

The paper's mapper is three transformer blocks that predict a change of the expression,
``w' = w + dw``, trained with ``L = 1 - cos(E_i(I_r), E_t(text))``: ``I_r`` the face rendered
with ``w'``, ``E_i`` / ``E_t`` CLIP's image and text encoders. The paper gives neither the
token layout, the widths nor the optimiser settings of this part, nor any term besides the CLIP
loss. Chosen here (:class:`TextEditConfig` holds them):

- **Tokens**: one token per expression coefficient (K = 53 for ICT): the coefficient's value
  through a linear embedding plus a learnt embedding of *which* blendshape it is, so attention
  relates blendshapes to one another (a single pooled token, as in a deleted public version,
  would make attention do nothing). Width 64, 4 heads, pre-norm blocks, no dropout. The output
  layer starts at zero, so the mapper starts as the identity (``dw = 0``), and is scaled by
  1 / sqrt(width), so that one Adam step changes a coefficient by at most ~ lr * sqrt(width).
- **Loss**: ``L = L_clip + w_keep * (1 - cos(E_i(I_r), E_i(I_0))) + w_l2 * |dw|^2 + w_range * R(w')``:
  ``I_0`` the face as reconstructed, so the second term (as StyleCLIP's identity term) keeps the
  person recognisable; the identity *shape* coefficients are never changed by an edit, so the
  geometric identity is kept exactly. ``R`` is the squared distance of ``w'`` outside the
  model's range ([0, 1] for blendshapes); the result is also clamped to it.
- **Optimiser**: Adam, 40 steps, learning rate 1e-2 for the offset and 1e-3 for the transformer
  (:meth:`ExpressionMapper.param_groups`; about 0.3 s per step on a 2-core CPU with a full-size
  ViT-B/32, ``benchmarks/edit.py``). These were set on randomly initialised stand-in encoders
  (no CLIP weights could be obtained here), where they lower the CLIP loss steadily; with the
  real weights, try ``--text-steps`` / ``--text-lr``.

The face is rendered textured with the reconstruction's own texture, over the photo, in a
224 px square crop around the face (:class:`faceclip.edit.render.FaceRenderer`), so CLIP sees a
photograph of the person with the edited expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceclip.edit.render import FaceRenderer, crop_photo
from faceclip.errors import FaceClipError
from faceclip.fit.adam import Adam


class ImageTextEncoder(Protocol):
    """What the optimisation needs of CLIP (:class:`faceclip.nets.clip.ClipImageText`)."""

    image_size_px: int

    def encode_image(self, images: Tensor) -> Tensor: ...  # (B, 3, H, W) in [0, 1] -> (B, D)

    def encode_text(self, texts: Sequence[str]) -> Tensor: ...  # N -> (N, D)


class ExpressionMapper(nn.Module):
    """Three transformer blocks over the K expression coefficients: (B, K) -> (B, K) edited.

    Args:
        n_coeffs: K.
        width: token width.
        depth: transformer blocks (the paper: 3).
        heads: attention heads.
    """

    def __init__(self, n_coeffs: int, width: int = 64, depth: int = 3, heads: int = 4) -> None:
        super().__init__()
        self.value = nn.Linear(1, width)
        self.which = nn.Parameter(torch.randn(n_coeffs, width))  # distinct tokens from the start
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # Adam moves every output weight by about the learning rate at once, so without this
        # scale the first step could change a coefficient by ~lr * width.
        self.out_scale = width ** -0.5
        # A per-blendshape offset beside the transformer's output: with it, Adam's first steps
        # follow the gradient of each coefficient (as a direct optimisation of w would), while the
        # blocks learn how the coefficients move together.
        self.offset = nn.Parameter(torch.zeros(n_coeffs))

    def param_groups(self, lr: float, inner_factor: float = 0.1) -> list[dict]:
        """Adam groups: the offset at ``lr``, the transformer (embeddings, blocks, output layer)
        at ``lr * inner_factor``. A step of ``lr`` on every weight of the transformer changes
        its output more than the edit needs, and the loss then jumps from step to step."""
        return [{"params": [self.offset], "lr": lr},
                {"params": [p for p in self.parameters() if p is not self.offset], "lr": lr * inner_factor}]

    def delta(self, w: Tensor) -> Tensor:
        """(B, K) -> (B, K) the change ``dw``."""
        tokens = self.value(w.unsqueeze(-1)) + self.which  # (B, K, width)
        return self.out_scale * self.out(self.norm(self.blocks(tokens))).squeeze(-1) + self.offset

    def forward(self, w: Tensor) -> Tensor:
        """(B, K) -> (B, K) ``w + dw``."""
        return w + self.delta(w)


@dataclass(frozen=True)
class TextEditConfig:
    """Settings of the per-prompt optimisation (see the module docstring for the choices)."""

    steps: int = 40
    lr: float = 1e-2
    w_keep: float = 0.1
    w_l2: float = 0.02
    w_range: float = 1.0
    crop_px: int = 224
    seed: int = 0
    width: int = 64
    depth: int = 3
    heads: int = 4

    def __post_init__(self) -> None:
        if self.steps < 0 or not 0 < self.lr < float("inf") or self.crop_px < 32:
            raise ValueError(f"bad text-edit settings: steps {self.steps}, lr {self.lr}, crop {self.crop_px}")
        for name in ("w_keep", "w_l2", "w_range"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a number >= 0")


@dataclass
class TextEditResult:
    """The edited expression and how the optimisation went."""

    expression: Tensor  # (1, K) clamped to the model's range
    losses: list[dict[str, float]] = field(default_factory=list)  # per step, before its update
    final: dict[str, float] = field(default_factory=dict)  # the losses of ``expression``
    mapper: ExpressionMapper | None = None

    @property
    def clip_loss_first_last(self) -> tuple[float, float]:
        """The CLIP loss of the reconstruction's expression and of the edited one."""
        return self.losses[0]["clip"] if self.losses else self.final["clip"], self.final["clip"]


def range_penalty(w: Tensor, lo: float, hi: float) -> Tensor:
    """(B, K) -> (B,) squared distance outside [lo, hi], summed over K."""
    return (F.relu(lo - w) ** 2 + F.relu(w - hi) ** 2).sum(-1)


class TextEditObjective:
    """The loss of one prompt for one face: call with (B, K) coefficients -> (total, parts).

    Args:
        renderer: the face's renderer.
        encoder: CLIP image and text encoders.
        prompt: the text.
        config: weights and crop size.
        value_range: the model's coefficient range.
        start: (1, K) the coefficients the mapper starts from (default: the face's own).
    """

    def __init__(self, renderer: FaceRenderer, encoder: ImageTextEncoder, prompt: str,
                 config: TextEditConfig = TextEditConfig(), value_range: tuple[float, float] = (0.0, 1.0),
                 start: Tensor | None = None) -> None:
        self.renderer = renderer
        self.encoder = encoder
        self.config = config
        self.range = value_range
        face = renderer.face
        self.w0 = (face.expression if start is None else start).detach()
        self.window = renderer.square_window(config.crop_px, torch.cat([face.expression, self.w0]))
        self.camera = renderer.camera_for(self.window)
        bg = crop_photo(face.photo, self.window)
        self.background = torch.from_numpy(bg).float().div(255.0)  # (S, S, 3)
        with torch.no_grad():
            self.text = F.normalize(encoder.encode_text([prompt]).float(), dim=-1)  # (1, D)
            self.start = F.normalize(encoder.encode_image(self.images(self.w0)), dim=-1)  # (1, D)

    def images(self, w: Tensor) -> Tensor:
        """(B, K) -> (B, 3, S, S) the face rendered over the photo crop, in [0, 1]."""
        image, alpha = self.renderer.render(w, self.camera)
        rgb = image + (1 - alpha.unsqueeze(-1)) * self.background
        return rgb.permute(0, 3, 1, 2)

    def __call__(self, w: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        emb = F.normalize(self.encoder.encode_image(self.images(w)), dim=-1)
        c = self.config
        parts = {
            "clip": 1 - (emb * self.text).sum(-1),
            "keep": 1 - (emb * self.start).sum(-1),
            "l2": ((w - self.w0) ** 2).sum(-1),
            "range": range_penalty(w, *self.range),
        }
        total = parts["clip"] + c.w_keep * parts["keep"] + c.w_l2 * parts["l2"] + c.w_range * parts["range"]
        return total.mean(), {k: v.mean() for k, v in parts.items()}


def optimise_mapper(objective: TextEditObjective, config: TextEditConfig | None = None,
                    progress: Callable[[int, dict[str, float]], None] | None = None) -> TextEditResult:
    """Optimise a fresh :class:`ExpressionMapper` for the objective's prompt and face.

    Args:
        objective: the prompt's loss for the face.
        config: settings (default: the objective's).
        progress: called after each step with (step, losses).

    Returns:
        The edited expression (clamped to the model's range), the per-step losses, the mapper.
    """
    c = config or objective.config
    w0 = objective.w0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        mapper = ExpressionMapper(w0.shape[1], c.width, c.depth, c.heads)
    opt = Adam(mapper.param_groups(c.lr))  # torch.optim.Adam's update without importing torch._dynamo
    losses: list[dict[str, float]] = []
    for step in range(c.steps):
        opt.zero_grad()
        total, parts = objective(mapper(w0))
        total.backward()
        opt.step()
        rec = {"total": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
        if not np.isfinite(rec["total"]):
            raise FaceClipError(f"the text edit diverged at step {step} (loss {rec['total']})",
                                hint="lower --text-lr")
        losses.append(rec)
        if progress is not None:
            progress(step + 1, rec)
    with torch.no_grad():
        w = mapper(w0).clamp(*objective.range)
        total, parts = objective(w)
    final = {"total": float(total), **{k: float(v) for k, v in parts.items()}}
    return TextEditResult(w, losses, final, mapper)
