"""Named expressions as FACS action units, and how an edit changes blendshape weights.

ICT-FaceKit's 53 expression components are blendshapes named as Apple's ARKit names them
(``jawOpen``, ``mouthSmile_L``...). ``_L`` / ``_R`` are the **subject's own** left and right
(ICT's ``eyeBlink_L`` closes the eye on the model's +X side, the subject's left, which a photo
shows on the image's right). Weights are in [0, 1].

Each named expression is a combination of FACS action units (Ekman, Friesen & Hager, *Facial
Action Coding System*, 2002), with the emotion prototypes of EMFACS as tabulated by Ekman and
Friesen:

============  ============================================  ===============================
name          action units (intensity A-E)                  note
============  ============================================  ===============================
neutral       none                                          every blendshape to 0
happy         6C + 12D                                      Duchenne smile; alias ``smile``
sad           1D + 4B + 15D
surprise      1D + 2D + 5B + 26E
fear          1D + 2C + 4B + 5D + 7B + 20C + 26B
anger         4E + 5C + 7C + 23D
disgust       9D + 15C + 16C
contempt      R12C + R14C                                   unilateral (the subject's right);
                                                            EMFACS says R12A + R14A, shown at
                                                            C so that it is visible
contempt_left L12C + L14C                                   the mirror image
wink_left     L46E + L6B                                    the subject's left eye
wink_right    R46E + R6B
jaw_open      26E + 27C
pout          17C + 18D
============  ============================================  ===============================

Intensities A, B, C, D, E are weights 0.2, 0.4, 0.6, 0.8, 1.0. Each action unit drives ICT
blendshapes through :data:`AU_BLENDSHAPES` (the usual FACS-to-ARKit correspondence; where one
AU maps to two blendshapes both take its weight, scaled by the factor listed there).

The emotions (``neutral`` to ``contempt_left``) are whole expressions: their tables list every
blendshape except the gaze (``eyeLook*``), at 0 where their action units do not drive it. The
modifiers (``wink_left``, ``wink_right``, ``jaw_open``, ``pout``) list only their own
blendshapes, so they combine with the current expression (``--expression happy --expression
wink_left``).

Edits (see :func:`apply_expression`): a named expression at strength ``s`` moves each blendshape
*its table lists* from the current weight ``w`` toward the table weight ``t``:
``w + s (t - w)`` (``s = 1`` gives exactly the table, ``s = 0.5`` half way). Other blendshapes
are left alone. A blendshape name (ICT's, or Apple's ARKit name, see :func:`arkit_to_ict`) at
strength ``s`` sets its weight (both sides' for ``browInnerUp`` / ``cheekPuff``) to ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from faceclip.errors import FaceClipError

#: FACS intensity letter -> weight.
INTENSITY = {"A": 0.2, "B": 0.4, "C": 0.6, "D": 0.8, "E": 1.0}

#: Action unit -> (ICT blendshape, factor) pairs. L/R prefixes (``"L46"``) pick one side.
AU_BLENDSHAPES: dict[str, tuple[tuple[str, float], ...]] = {
    "1": (("browInnerUp_L", 1.0), ("browInnerUp_R", 1.0)),      # inner brow raiser
    "2": (("browOuterUp_L", 1.0), ("browOuterUp_R", 1.0)),      # outer brow raiser
    "4": (("browDown_L", 1.0), ("browDown_R", 1.0)),            # brow lowerer
    "5": (("eyeWide_L", 1.0), ("eyeWide_R", 1.0)),              # upper lid raiser
    "6": (("cheekSquint_L", 1.0), ("cheekSquint_R", 1.0)),      # cheek raiser
    "7": (("eyeSquint_L", 1.0), ("eyeSquint_R", 1.0)),          # lid tightener
    "9": (("noseSneer_L", 1.0), ("noseSneer_R", 1.0)),          # nose wrinkler
    "10": (("mouthUpperUp_L", 1.0), ("mouthUpperUp_R", 1.0)),   # upper lip raiser
    "12": (("mouthSmile_L", 1.0), ("mouthSmile_R", 1.0)),       # lip corner puller
    "14": (("mouthDimple_L", 1.0), ("mouthDimple_R", 1.0)),     # dimpler
    "15": (("mouthFrown_L", 1.0), ("mouthFrown_R", 1.0)),       # lip corner depressor
    "16": (("mouthLowerDown_L", 1.0), ("mouthLowerDown_R", 1.0)),  # lower lip depressor
    "17": (("mouthShrugLower", 1.0),),                          # chin raiser
    "18": (("mouthPucker", 1.0),),                              # lip pucker
    "20": (("mouthStretch_L", 1.0), ("mouthStretch_R", 1.0)),   # lip stretcher
    "23": (("mouthPress_L", 1.0), ("mouthPress_R", 1.0)),       # lip tightener
    "26": (("jawOpen", 0.5),),                                  # jaw drop
    "27": (("jawOpen", 1.0),),                                  # mouth stretch (jaw wide open)
    "46": (("eyeBlink_L", 1.0), ("eyeBlink_R", 1.0)),           # wink (one side) / blink
}

#: Named expression -> (FACS code string, one-line description).
NAMED_FACS: dict[str, tuple[str, str]] = {
    "neutral": ("", "every blendshape at 0"),
    "happy": ("6C+12D", "happiness: cheek raiser + lip corner puller (Duchenne smile)"),
    "sad": ("1D+4B+15D", "sadness: inner brow raiser + brow lowerer + lip corner depressor"),
    "surprise": ("1D+2D+5B+26E", "surprise: brows raised, upper lids raised, jaw dropped"),
    "fear": ("1D+2C+4B+5D+7B+20C+26B", "fear: brows raised and drawn together, lids tense, lips stretched"),
    "anger": ("4E+5C+7C+23D", "anger: brows lowered, lids raised and tightened, lips tightened"),
    "disgust": ("9D+15C+16C", "disgust: nose wrinkled, lip corners and lower lip down"),
    "contempt": ("R12C+R14C", "contempt: one-sided (the subject's right) lip corner pull and dimple"),
    "contempt_left": ("L12C+L14C", "contempt on the subject's left side"),
    "wink_left": ("L46E+L6B", "the subject's left eye closed, its cheek slightly raised"),
    "wink_right": ("R46E+R6B", "the subject's right eye closed, its cheek slightly raised"),
    "jaw_open": ("26E+27C", "mouth wide open"),
    "pout": ("17C+18D", "pout: chin raised, lips pushed forward"),
}

#: Other names accepted for the named expressions.
ALIASES = {"smile": "happy", "happiness": "happy", "sadness": "sad", "surprised": "surprise",
           "angry": "anger", "disgusted": "disgust", "afraid": "fear", "open_mouth": "jaw_open"}


#: Apple ARKit's 52 face blendshape names (ARFaceAnchor.BlendShapeLocation), in Apple's order.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)


def arkit_to_ict(name: str, blendshape_names: Sequence[str]) -> tuple[str, ...]:
    """The ICT blendshapes behind one ARKit name: ``eyeBlinkLeft`` -> (``eyeBlink_L``,);
    ``browInnerUp`` and ``cheekPuff``, which ICT splits by side, -> both sides; () when the model
    has none (``tongueOut``: ICT has no tongue)."""
    if name in blendshape_names:  # jawLeft, mouthRight...: the same name in both
        return (name,)
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if name.endswith(side):
            ict = name[: -len(side)] + suffix
            return (ict,) if ict in blendshape_names else ()
    both = tuple(n for n in (name + "_L", name + "_R") if n in blendshape_names)
    return both if len(both) == 2 else ()


def arkit_weights(weights: Sequence[float], blendshape_names: Sequence[str]) -> dict[str, float]:
    """ICT blendshape weights -> Apple's 52 ARKit names (for ARKit / Live Link rigs): sides that
    ICT splits are averaged, names ICT lacks (``tongueOut``) are 0."""
    value = dict(zip(blendshape_names, (float(w) for w in weights)))
    out = {}
    for name in ARKIT_NAMES:
        ict = arkit_to_ict(name, blendshape_names)
        out[name] = sum(value[n] for n in ict) / len(ict) if ict else 0.0
    return out


@dataclass(frozen=True)
class NamedExpression:
    """A named expression: its FACS code and the blendshape weights it sets."""

    name: str
    facs: str
    description: str
    weights: Mapping[str, float]


def parse_facs(code: str) -> dict[str, float]:
    """``"1D+4B+15D"`` -> {blendshape: weight}. ``L``/``R`` before an AU number picks one side.

    Raises:
        ValueError: an unknown action unit or intensity.
    """
    out: dict[str, float] = {}
    for item in filter(None, code.split("+")):
        side = item[0] if item[0] in "LR" else ""
        body = item[len(side):]
        au, letter = body[:-1], body[-1]
        if au not in AU_BLENDSHAPES or letter not in INTENSITY:
            raise ValueError(f"unknown FACS item {item!r} (known AUs {', '.join(AU_BLENDSHAPES)}, intensities A-E)")
        for shape, factor in AU_BLENDSHAPES[au]:
            if side and not shape.endswith("_" + side):
                continue
            out[shape] = max(out.get(shape, 0.0), round(INTENSITY[letter] * factor, 4))
    return out


#: Named expressions that change only their own blendshapes (the others set a whole expression).
MODIFIERS = ("wink_left", "wink_right", "jaw_open", "pout")

#: Blendshapes that no named expression moves: the gaze (``eyeLook*``), apart from ``neutral``.
GAZE_PREFIX = "eyeLook"


def named_expressions(blendshape_names: Sequence[str]) -> dict[str, NamedExpression]:
    """Every named expression for a model with these blendshape names.

    ``neutral`` lists every blendshape at 0. The emotions (every name not in :data:`MODIFIERS`)
    are whole expressions: they list every blendshape but the gaze, at 0 where their action
    units do not drive it, so a smile does not survive a change to "sad". The modifiers list only
    the blendshapes of their action units and can be added to any expression.
    """
    table = {}
    for name, (code, desc) in NAMED_FACS.items():
        weights = parse_facs(code)
        if name == "neutral":
            weights = {n: 0.0 for n in blendshape_names}
        elif name not in MODIFIERS:
            weights = {**{n: 0.0 for n in blendshape_names if not n.startswith(GAZE_PREFIX)}, **weights}
        table[name] = NamedExpression(name, code, desc, weights)
    return table


@dataclass(frozen=True)
class ExpressionEdit:
    """One requested change: a named expression or a blendshape, at a strength."""

    name: str
    strength: float = 1.0

    @staticmethod
    def parse(text: str) -> "ExpressionEdit":
        """``"happy"``, ``"happy:0.5"``, ``"jawOpen:0.3"`` -> an edit (strength 0..2, default 1)."""
        name, _, value = text.strip().partition(":")
        name = name.strip()
        if not name:
            raise FaceClipError(f"--expression {text!r}: no name", hint="e.g. --expression happy:0.7")
        try:
            strength = float(value) if value.strip() else 1.0
        except ValueError:
            raise FaceClipError(f"--expression {text!r}: strength {value!r} is not a number",
                                hint="e.g. --expression happy:0.7") from None
        if not 0.0 <= strength <= 2.0:
            raise FaceClipError(f"--expression {text!r}: strength must be between 0 and 2")
        return ExpressionEdit(name, strength)


def resolve(name: str, blendshape_names: Sequence[str]) -> NamedExpression | tuple[str, ...]:
    """A named expression (aliases and case allowed), or the blendshapes behind a blendshape name
    or an Apple ARKit name (``eyeBlinkLeft`` -> ``eyeBlink_L``; ``browInnerUp`` and ``cheekPuff``
    -> both of ICT's sides).

    Raises:
        FaceClipError: none of these, naming the closest known names.
    """
    if name in blendshape_names:
        return (name,)
    if name in ARKIT_NAMES:
        ict = arkit_to_ict(name, blendshape_names)
        if not ict:
            raise FaceClipError(f"ARKit blendshape {name!r} has no counterpart in this face model",
                                hint="ICT-FaceKit has no tongue shape")
        return ict
    key = ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
    table = named_expressions(blendshape_names)
    if key in table:
        missing = [n for n in table[key].weights if n not in blendshape_names]
        if missing:
            raise FaceClipError(f"expression {name!r} needs blendshapes this face model lacks: {', '.join(missing)}",
                                hint="named expressions need a blendshape model (ICT-FaceKit)")
        return table[key]
    by_lower = {n.lower(): n for n in blendshape_names}
    if name.lower() in by_lower:
        return (by_lower[name.lower()],)
    import difflib

    close = difflib.get_close_matches(name, list(table) + list(blendshape_names), n=3, cutoff=0.5)
    raise FaceClipError(f"unknown expression {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""),
                        hint="`faceclip expressions` lists the named expressions and blendshapes")


def apply_expression(weights: Sequence[float], blendshape_names: Sequence[str], edit: ExpressionEdit,
                     ) -> list[float]:
    """The weights after one edit (see the module docstring); the input is not changed.

    Args:
        weights: (K,) current blendshape weights.
        blendshape_names: (K,) their names.
        edit: what to apply.
    """
    out = [float(w) for w in weights]
    target = resolve(edit.name, blendshape_names)
    if isinstance(target, tuple):  # blendshapes: set to the strength
        for shape in target:
            out[list(blendshape_names).index(shape)] = edit.strength
        return out
    index = {n: i for i, n in enumerate(blendshape_names)}
    for shape, t in target.weights.items():
        i = index[shape]
        out[i] = out[i] + edit.strength * (t - out[i])
    return out
