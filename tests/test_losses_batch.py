"""Batch reduction of every loss in ``faceclip.losses``.

Every loss documents "mean over the batch" of a per-sample value (``faceclip.losses``'s module
docstring and each function's Returns). So for per-sample inputs ``a, b, c`` of batch 1:

- ``loss([a, b, c]) == mean(loss(a), loss(b), loss(c))`` (a sum over the batch, a statistic
  pooled over the batch, or per-sample weights / scales / masks applied to the wrong row fail);
- ``loss([a] * B) == loss(a)`` for B copies (a sum gives ``B * loss(a)``).

The samples are drawn so that their losses differ by a clear factor (checked), so that a mean, a
sum and a pooled ratio give different numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from faceclip.losses import (
    ClipConsistencyLoss,
    IdentityLoss,
    albedo_skin_prior,
    albedo_smoothness,
    albedo_symmetry,
    clip_geometric_loss,
    clip_semantic_loss,
    coefficient_l2,
    identity_loss,
    landmark_loss,
    light_chroma,
    photometric_loss,
)
from faceclip.nets.clip import ClipFeatures

B_COPIES = 4
RTOL = 1e-5


def _cat(samples: Sequence[tuple]) -> tuple:
    """Per-position concatenation along the batch of a list of argument tuples (batch 1 each).

    Nested sequences of tensors (the CLIP layers) are concatenated layer by layer."""
    out = []
    for parts in zip(*samples):
        if isinstance(parts[0], Tensor):
            out.append(torch.cat(parts))
        else:
            out.append(tuple(torch.cat(layer) for layer in zip(*parts)))
    return tuple(out)


def _check_mean_over_batch(loss: Callable[..., Tensor], samples: Sequence[tuple]) -> list[float]:
    """Assert both batch identities for ``loss`` on ``samples`` (argument tuples of batch 1)."""
    singles = [float(loss(*s)) for s in samples]
    assert min(singles) > 0, singles
    # the samples differ: a sum, a mean and a single sample's loss are told apart
    assert max(singles) > 1.5 * min(singles), singles
    batched = float(loss(*_cat(samples)))
    assert batched == pytest.approx(sum(singles) / len(singles), rel=RTOL), (batched, singles)
    copies = float(loss(*_cat([samples[0]] * B_COPIES)))
    assert copies == pytest.approx(singles[0], rel=RTOL), (copies, singles[0])
    return singles


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- photometric


def _photo_sample(seed: int, radius: float, err: float) -> tuple[Tensor, Tensor, Tensor]:
    """(rendered, target, soft disc mask of ``radius`` (share of the side)), 16 x 16."""
    g = _gen(seed)
    target = torch.rand(1, 16, 16, 3, generator=g)
    rendered = (target + err * torch.randn(1, 16, 16, 3, generator=g)).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    mask = ((radius - (xx**2 + yy**2).sqrt()) * 4).clamp(0, 1)[None]  # soft edge: float weights
    return rendered, target, mask


def test_photometric_loss_is_the_mean_over_the_batch():
    # masks of very different areas: a ratio pooled over the batch would weigh the big one more
    samples = [_photo_sample(0, 0.3, 0.05), _photo_sample(1, 1.2, 0.3), _photo_sample(2, 0.7, 0.15)]
    _check_mean_over_batch(photometric_loss, samples)


def test_photometric_loss_empty_mask_counts_as_zero_in_the_mean():
    rendered, target, mask = _photo_sample(3, 0.8, 0.2)
    one = float(photometric_loss(rendered, target, mask))
    empty = (rendered.flip(1), target, torch.zeros_like(mask))
    both = photometric_loss(*_cat([(rendered, target, mask), empty]))
    assert float(both) == pytest.approx(one / 2, rel=RTOL)  # documented: contributes 0, still counted


# ----------------------------------------------------------------------------- landmarks


def _lm_sample(seed: int, err_px: float, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _gen(seed)
    target = 224 * torch.rand(1, 68, 2, generator=g)
    pred = target + err_px * torch.randn(1, 68, 2, generator=g)
    weights = 0.2 + torch.rand(1, 68, generator=g)  # per-sample weights (B, 68)
    return pred, target, weights, torch.tensor([scale])


def test_landmark_loss_is_the_mean_over_the_batch_with_per_sample_weights_and_scales():
    samples = [_lm_sample(0, 1.0, 1.0), _lm_sample(1, 4.0, 2.0), _lm_sample(2, 2.0, 0.5)]
    _check_mean_over_batch(lambda p, t, w, s: landmark_loss(p, t, weights=w, scale_px=s), samples)
    # default (68,) weights and a scalar scale
    _check_mean_over_batch(lambda p, t: landmark_loss(p, t, scale_px=224.0), [s[:2] for s in samples])


# ----------------------------------------------------------------------------- regularisers


def test_coefficient_l2_and_albedo_smoothness_are_means_over_the_batch():
    def coeffs(seed, k_shape, sigma):
        return (sigma * torch.randn(1, *k_shape, generator=_gen(seed)),)

    samples = [coeffs(0, (10,), 1.0), coeffs(1, (10,), 3.0), coeffs(2, (10,), 0.5)]
    _check_mean_over_batch(coefficient_l2, samples)
    w = torch.linspace(0.1, 2.0, 10)
    _check_mean_over_batch(lambda c: coefficient_l2(c, w), samples)
    samples3 = [coeffs(3, (10, 3), 1.0), coeffs(4, (10, 3), 2.5), coeffs(5, (10, 3), 0.4)]
    _check_mean_over_batch(coefficient_l2, samples3)
    _check_mean_over_batch(lambda c: albedo_smoothness(c, w), samples3)


def test_albedo_symmetry_is_a_mean_over_the_batch():
    V = 12
    mirror = torch.arange(V).flip(0)
    ids = torch.arange(0, V, 2)

    def albedo(seed, spread):
        return (0.5 + spread * torch.randn(1, V, 3, generator=_gen(seed)),)

    samples = [albedo(0, 0.05), albedo(1, 0.2), albedo(2, 0.1)]
    _check_mean_over_batch(lambda a: albedo_symmetry(a, mirror), samples)
    _check_mean_over_batch(lambda a: albedo_symmetry(a, mirror, ids), samples)


def test_albedo_skin_prior_is_a_mean_over_the_batch():
    skin = torch.tensor([0, 2, 3])

    def albedo(rgb, seed):
        return (torch.tensor(rgb).expand(1, 5, 3) + 0.01 * torch.randn(1, 5, 3, generator=_gen(seed)),)

    # blue-ish (ordering violated), too bright, green-ish: three different penalties
    samples = [albedo([0.3, 0.4, 0.6], 0), albedo([1.1, 1.05, 1.0], 1), albedo([0.3, 0.5, 0.2], 2)]
    _check_mean_over_batch(lambda a: albedo_skin_prior(a, skin), samples)
    _check_mean_over_batch(lambda a: albedo_skin_prior(a, None), samples)


def test_light_chroma_is_a_mean_over_the_batch():
    def sh(seed, tint):
        s = 0.1 * torch.randn(1, 9, 3, generator=_gen(seed))
        s[0, 0] = torch.tensor([0.8, 0.8, 0.8]) + torch.tensor(tint)
        return (s,)

    samples = [sh(0, [0.0, 0.0, 0.3]), sh(1, [0.6, 0.0, -0.2]), sh(2, [0.0, 0.1, 0.0])]
    _check_mean_over_batch(light_chroma, samples)


# ----------------------------------------------------------------------------- identity


def _emb_pair(seed: int, noise: float, D: int = 16) -> tuple[Tensor, Tensor]:
    g = _gen(seed)
    e = torch.randn(1, D, generator=g)
    return e, 2.0 * e + noise * torch.randn(1, D, generator=g)  # scale-free; noise sets the angle


def test_identity_loss_is_a_mean_over_the_batch():
    samples = [_emb_pair(0, 0.3), _emb_pair(1, 2.0), _emb_pair(2, 0.8)]
    _check_mean_over_batch(identity_loss, samples)


class _StubFaceEncoder(nn.Module):
    """A small frozen face-recognition stand-in (``embed``, ``input_px``, ``aligned_box``) with
    batch norm whose running statistics are not the identity: put into training mode, its
    embeddings would depend on the rest of the batch."""

    input_px = 24
    aligned_box = (0.1, 0.05, 0.9, 0.95)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(64, 12))
        bn = self.net[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)

    def embed(self, images: Tensor) -> Tensor:
        return self.net(images)


def _image_pair(seed: int, change: float) -> tuple[Tensor, Tensor]:
    g = _gen(seed)
    photo = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    return photo, (photo + change * torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)


def test_identity_loss_module_is_a_mean_over_the_batch_also_in_training_mode():
    loss = IdentityLoss(_StubFaceEncoder().double())  # float64: 1 - cos of close embeddings
    samples = [_image_pair(0, 0.1), _image_pair(1, 0.6), _image_pair(2, 0.3)]
    with torch.no_grad():
        singles = _check_mean_over_batch(loss, samples)
        loss.train()  # the encoder stays frozen in evaluation mode: samples stay independent
        assert not loss.encoder.training
        _check_mean_over_batch(loss, samples)
        assert float(loss(*samples[1])) == pytest.approx(singles[1], rel=RTOL)


# ----------------------------------------------------------------------------- CLIP


def _clip_feature_pair(seed: int, change: float) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    g = _gen(seed)
    f_in = (torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 8, 3, 3, generator=g))
    f_r = tuple(f + change * torch.randn(f.shape, generator=g) for f in f_in)
    return f_in, f_r


def test_clip_geometric_and_semantic_losses_are_means_over_the_batch():
    samples = [_clip_feature_pair(0, 0.2), _clip_feature_pair(1, 1.0), _clip_feature_pair(2, 0.5)]
    _check_mean_over_batch(clip_geometric_loss, samples)
    _check_mean_over_batch(lambda a, b: clip_geometric_loss(a, b, weights=(0.3, 2.0)), samples)
    _check_mean_over_batch(clip_semantic_loss, [_emb_pair(3, 0.3), _emb_pair(4, 2.0), _emb_pair(5, 0.8)])


class _StubClipEncoders(nn.Module):
    """Stands in for ``ClipEncoders``: two feature layers and an embedding of masked images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.l2 = nn.Conv2d(3, 4, 3, stride=2)
        self.l3 = nn.Conv2d(4, 8, 3, stride=2)
        self.head = nn.Linear(8, 10)

    def forward(self, images: Tensor, mask: Tensor | None) -> ClipFeatures:
        if mask is not None:
            images = images * (mask if mask.ndim == 4 else mask[:, None])
        f2 = self.l2(images)
        f3 = self.l3(torch.relu(f2))
        return ClipFeatures((f2, f3), self.head(f3.mean((2, 3))))


def test_clip_consistency_loss_module_is_a_mean_over_the_batch():
    loss = ClipConsistencyLoss(_StubClipEncoders().double(), layer_weights=(1.0, 0.5), geometric_weight=1.0,
                               semantic_weight=3.0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")

    def sample(seed, change, radius):
        photo, render = _image_pair(seed, change)
        return photo, render, ((xx**2 + yy**2).sqrt() <= radius).double()[None]

    samples = [sample(0, 0.1, 0.5), sample(1, 0.6, 1.0), sample(2, 0.3, 0.8)]
    with torch.no_grad():
        for part in ("total", "geometric", "semantic"):
            _check_mean_over_batch(lambda p, r, m: getattr(loss(p, r, m), part), samples)
