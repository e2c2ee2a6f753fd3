"""Frozen CLIP encoders: architectures, preprocessing, freezing, finding and loading weights.

No CLIP weights exist here: the tests use randomly initialised RN50x4 / ViT-B/32 built once per
session, save them in the formats users bring (OpenAI TorchScript archive, open_clip
checkpoints) and check that loading them back gives identical features. Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from faceclip.errors import FaceClipError, ModelNotInstalledError
from faceclip.nets.clip import CLIP_MEAN, CLIP_STD, RN50X4, VITB32, ClipEncoders, load_clip_tower, read_clip_state_dict
from faceclip.nets.clip_weights import ClipWeights, find_clip_weights, install_clip_weights, load_clip_encoders

SIZE = 64  # test images; the encoders resize to 288 / 224


@pytest.fixture(scope="session")
def clip_random() -> ClipEncoders:
    """Random RN50x4 + ViT-B/32 (with text tower), built once."""
    return ClipEncoders.random(seed=0, with_text=True)


@pytest.fixture(scope="session")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 3, 64, 64) images in [0, 1] and a (2, 64, 64) face mask (an ellipse)."""
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, SIZE, SIZE, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    mask = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 <= 1).float().expand(2, SIZE, SIZE).contiguous()
    return img, mask


@pytest.fixture(scope="session")
def checkpoint_files(clip_random, tmp_path_factory) -> dict[str, Path]:
    """The random weights saved as users bring them (written once per session).

    - ``rn50x4_torchscript``: an OpenAI-style TorchScript archive (keys ``visual.*`` plus
      ``input_resolution`` / ``context_length`` / ``vocab_size``, half-precision like OpenAI's);
    - ``rn50x4_bin``: an open_clip training checkpoint ``{"state_dict": {"module.visual...": }}``;
    - ``vitb32_safetensors``: the whole ViT-B/32 CLIP model (image + text) as open_clip
      safetensors.
    """
    folder = tmp_path_factory.mktemp("clip_weights")
    files = {}

    class OpenAIArchive(nn.Module):
        def __init__(self, visual: nn.Module) -> None:
            super().__init__()
            self.visual = visual
            for name, value in (("input_resolution", 288), ("context_length", 77), ("vocab_size", 49408)):
                self.register_buffer(name, torch.tensor(value))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2  # tracing keeps every parameter and buffer, used or not

    import copy

    half = copy.deepcopy(clip_random.rn50x4).half()
    files["rn50x4_torchscript"] = folder / "RN50x4.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, but it is what OpenAI ships
        warnings.simplefilter("ignore", DeprecationWarning)
        archive = torch.jit.trace(OpenAIArchive(half), torch.zeros(1))
        torch.jit.save(archive, str(files["rn50x4_torchscript"]))
    del archive, half

    sd = {f"module.visual.{k}": v for k, v in clip_random.rn50x4.state_dict().items()}
    files["rn50x4_bin"] = folder / "rn50x4_openclip.bin"
    torch.save({"epoch": 3, "state_dict": sd}, files["rn50x4_bin"])

    from safetensors.torch import save_file

    full = {f"visual.{k}": v for k, v in clip_random.vitb32.state_dict().items()}
    full.update(clip_random.text.state_dict())
    files["vitb32_safetensors"] = folder / "vitb32.safetensors"
    save_file({k: v.contiguous() for k, v in full.items()}, str(files["vitb32_safetensors"]))
    return files


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """No CLIP weights anywhere: private FACECLIP_HOME, HF cache and home folder."""
    monkeypatch.setenv("FACECLIP_HOME", str(tmp_path / "fc_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", RN50X4.env_var, VITB32.env_var):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# --------------------------------------------------------------------------- architectures


def test_architecture_constants_match_open_clip():
    from faceclip.nets._torchvision import import_torchvision

    import_torchvision()
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and CLIP_STD == tuple(OPENAI_DATASET_STD)
    for arch in (RN50X4, VITB32):
        assert open_clip.get_pretrained_cfg(arch.open_clip_name, "openai")["hf_hub"].rstrip("/") == arch.hf_repo
        assert open_clip.get_pretrained_url(arch.open_clip_name, "openai").endswith("/" + arch.openai_filename)
        assert open_clip.get_model_config(arch.open_clip_name)["vision_cfg"]["image_size"] == arch.image_size_px


def test_feature_shapes_and_text(clip_random, images):
    img, mask = images
    with torch.no_grad():
        feats = clip_random(img, mask)
        text = clip_random.encode_text(["a smiling face", "a frowning face"])
    f2, f3 = feats.geometric
    assert f2.shape == (2, 640, 36, 36) and f3.shape == (2, 1280, 18, 18)
    assert feats.semantic.shape == (2, 512)
    assert text.shape == (2, 512) and not torch.allclose(text[0], text[1])
    assert all(torch.isfinite(t).all() for t in (f2, f3, feats.semantic, text))
    # the geometric path stops at layer3: layer4 / attnpool are never run
    calls = []
    hook = clip_random.rn50x4.layer4.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        clip_random.geometric_features(img[:1])
    hook.remove()
    assert not calls


def test_text_encoder_absent_is_a_clear_error():
    enc = ClipEncoders(nn.Identity(), nn.Identity(), None, source="stub")
    with pytest.raises(FaceClipError, match="text encoder is not loaded"):
        enc.encode_text(["a face"])


def test_preprocess_background_is_clip_mean(clip_random):
    mean_img = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1).expand(1, 3, 40, 40)
    x = clip_random.preprocess(mean_img, torch.ones(1, 40, 40), 224)
    assert x.shape == (1, 3, 224, 224) and x.abs().max() < 1e-5
    rand = torch.rand(1, 3, 40, 40)
    assert clip_random.preprocess(rand, torch.zeros(1, 1, 40, 40), 288).abs().max() == 0
    with pytest.raises(ValueError, match="mask"):
        clip_random.preprocess(rand, torch.ones(1, 20, 20), 224)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_random.preprocess(rand.permute(0, 2, 3, 1), None, 224)


def test_background_outside_mask_is_ignored(clip_random, images):
    img, mask = images
    other = torch.where(mask[:, None] > 0, img, torch.rand_like(img))
    with torch.no_grad():
        a, b = clip_random(img, mask), clip_random(other, mask)
    assert torch.equal(a.geometric[0], b.geometric[0]) and torch.equal(a.semantic, b.semantic)


def test_frozen_eval_mode_and_gradient_to_images(clip_random, images):
    img, mask = images
    parent = nn.ModuleDict({"clip": clip_random, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not clip_random.training and not any(m.training for m in clip_random.modules())
    assert not any(p.requires_grad for p in clip_random.parameters())
    x = img[:1].clone().requires_grad_(True)
    f2, f3 = clip_random.geometric_features(x, mask[:1])
    (f2.square().mean() + f3.square().mean() + clip_random.semantic_embedding(x, mask[:1]).square().mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    # only pixels inside the mask receive gradient
    assert x.grad[0][:, mask[0] == 0].abs().max() == 0
    assert all(p.grad is None for p in clip_random.parameters())


# --------------------------------------------------------------------------- weights: finding


def test_missing_weights_raise_with_guidance(clean_env):
    weights = find_clip_weights()
    assert weights.rn50x4 is None and weights.vitb32 is None
    with pytest.raises(ModelNotInstalledError) as exc:
        load_clip_encoders(weights)
    msg = str(exc.value)
    assert "CLIP weights not found" in msg and "RN50x4.pt" in msg and "ViT-B-32.pt" in msg
    assert "faceclip models install clip-rn50x4" in msg and "faceclip models install clip-vitb32" in msg
    assert str(clean_env / "fc_home" / "models") in msg


def test_search_order(clean_env, monkeypatch):
    # open_clip's caches: the HF hub snapshot named by refs/main, and OpenAI's ~/.cache/clip
    repo = clean_env / "hf" / "hub" / "models--timm--resnet50x4_clip.openai"
    for rev in ("aaa", "bbb"):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "open_clip_model.safetensors").write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbb")
    legacy = clean_env / "home" / ".cache" / "clip" / "ViT-B-32.pt"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x")
    w = find_clip_weights()
    assert w.rn50x4 == repo / "snapshots" / "bbb" / "open_clip_model.safetensors" and w.vitb32 == legacy
    # $FACECLIP_HOME/models beats the caches
    models = clean_env / "fc_home" / "models"
    models.mkdir(parents=True)
    (models / "clip-rn50x4.pt").write_bytes(b"x")
    assert find_clip_weights().rn50x4 == models / "clip-rn50x4.pt"
    # the environment variable beats the install; an explicit path beats everything
    env_file = clean_env / "env_rn.pt"
    env_file.write_bytes(b"x")
    monkeypatch.setenv(RN50X4.env_var, str(env_file))
    assert find_clip_weights().rn50x4 == env_file
    assert find_clip_weights(rn50x4=legacy).rn50x4 == legacy
    # named but missing files are errors, not silently skipped
    monkeypatch.setenv(RN50X4.env_var, str(clean_env / "nope.pt"))
    with pytest.raises(ModelNotInstalledError, match="FACECLIP_CLIP_RN50X4"):
        find_clip_weights()
    monkeypatch.delenv(RN50X4.env_var)
    with pytest.raises(ModelNotInstalledError, match="nowhere.pt"):
        find_clip_weights(vitb32=clean_env / "nowhere.pt")


# --------------------------------------------------------------------------- weights: loading


def test_garbage_and_wrong_architecture_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(ModelNotInstalledError, match=r"junk\.pt is not a readable CLIP checkpoint"):
        read_clip_state_dict(junk)
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(ModelNotInstalledError, match=r"junk\.safetensors is not a readable CLIP checkpoint"):
        read_clip_state_dict(junk_st)
    vit_like = tmp_path / "vit_like.pt"
    torch.save({"visual.conv1.weight": torch.zeros(768, 3, 32, 32), "visual.proj": torch.zeros(768, 512)}, vit_like)
    with pytest.raises(ModelNotInstalledError, match=r"vit_like\.pt does not hold CLIP RN50x4 weights"):
        load_clip_tower(RN50X4, vit_like)


def test_openai_torchscript_archive_loads_identically(clip_random, checkpoint_files, images):
    img, mask = images
    tower = load_clip_tower(RN50X4, checkpoint_files["rn50x4_torchscript"])
    assert all(p.dtype == torch.float32 for p in tower.parameters())
    # OpenAI's archives store half precision: compare with the reference rounded the same way
    rounded = ClipEncoders(_rounded_to_half(clip_random.rn50x4), nn.Identity())
    loaded = ClipEncoders(tower, nn.Identity())
    with torch.no_grad():
        a = loaded.geometric_features(img, mask)
        b = rounded.geometric_features(img, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _rounded_to_half(module: nn.Module) -> nn.Module:
    import copy

    out = copy.deepcopy(module)
    with torch.no_grad():
        for t in list(out.parameters()) + list(out.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return out


def test_open_clip_checkpoints_load_identically(clip_random, checkpoint_files, images):
    img, mask = images
    weights = ClipWeights(rn50x4=checkpoint_files["rn50x4_bin"], vitb32=checkpoint_files["vitb32_safetensors"])
    loaded = load_clip_encoders(weights, with_text=True)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        a, b = loaded(img, mask), clip_random(img, mask)
        texts = ["a face", "an open mouth"]
        ta, tb = loaded.encode_text(texts), clip_random.encode_text(texts)
    assert torch.equal(a.geometric[0], b.geometric[0]) and torch.equal(a.geometric[1], b.geometric[1])
    assert torch.equal(a.semantic, b.semantic) and torch.equal(ta, tb)


def test_install_and_list(clean_env, checkpoint_files, capsys):
    from faceclip.cli import main

    assert main(["models", "install", "clip-rn50x4", "--from", str(checkpoint_files["rn50x4_bin"])]) == 0
    target = clean_env / "fc_home" / "models" / "clip-rn50x4.bin"
    assert target.is_file()
    assert find_clip_weights().rn50x4 == target
    # without --from an installed file is kept
    assert install_clip_weights("clip-rn50x4") == target
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "yes" in rows["clip-rn50x4"] and str(target) in rows["clip-rn50x4"]
    assert "no" in rows["clip-vitb32"] and "faceclip models install clip-vitb32" in rows["clip-vitb32"]
    # a file of the wrong architecture is refused, naming it; nothing is installed
    junk = clean_env / "ViT-B-32.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3)}, junk)
    assert main(["models", "install", "clip-vitb32", "--from", str(junk)]) == 2
    err = capsys.readouterr().err
    assert str(junk) in err and "ViT-B-32" in err
    assert find_clip_weights().vitb32 is None
    # without --from and nothing in the caches: a clear error
    with pytest.raises(ModelNotInstalledError, match="needs --from FILE"):
        install_clip_weights("clip-vitb32")
