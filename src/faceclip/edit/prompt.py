"""The offline prompt parser: words of a text prompt -> named expressions with strengths.

Used for ``--text`` when CLIP's weights are not installed (the CLIP-guided mapper needs them).
It reads the prompt word by word (lower case, punctuation dropped):

- **emotion words** pick a named expression (:data:`WORDS`: ``smiling``, ``happy``, ``joyful``
  -> ``happy``; ``shocked``, ``astonished`` -> ``surprise``; ``wink`` -> ``wink_left`` /
  ``wink_right``; ``yawning``, ``open mouth`` -> ``jaw_open``...);
- an **intensity adverb** before it sets the strength (:data:`INTENSITY_WORDS`:
  ``slightly`` 0.35, ``somewhat`` 0.55, ``very`` 1.0...; without one, :data:`DEFAULT_STRENGTH`);
- ``left`` / ``right`` anywhere in the prompt choose the side of one-sided expressions (wink,
  contempt), the subject's own side; without one (or with both) a wink is the subject's left
  eye and contempt the subject's right mouth corner (as EMFACS codes it);
- ``not``, ``no``, ``never``, ``without`` drop the next emotion word of the same clause
  (``"not very angry"``; ``"without glasses, smiling"`` keeps the smile: punctuation and
  ``but``, ``and``, ``then``, ``with`` end a clause); an adverb applies likewise.

Several emotion words give several edits, applied in order. A prompt with none raises an
error that lists the words known.
"""

from __future__ import annotations

import re

from faceclip.edit.expressions import ExpressionEdit
from faceclip.errors import FaceClipError

#: Strength of an emotion word without an intensity adverb.
DEFAULT_STRENGTH = 0.75

#: Intensity adverbs -> strength of the next emotion word.
INTENSITY_WORDS = {
    "slightly": 0.35, "slight": 0.35, "faintly": 0.35, "faint": 0.35, "little": 0.35, "bit": 0.35,
    "mildly": 0.45, "mild": 0.45, "subtly": 0.35, "subtle": 0.35,
    "somewhat": 0.55, "moderately": 0.55, "fairly": 0.6, "rather": 0.65, "quite": 0.7,
    "very": 1.0, "really": 1.0, "extremely": 1.0, "super": 1.0, "totally": 1.0, "completely": 1.0,
    "wide": 1.0, "big": 1.0, "broad": 1.0, "huge": 1.0, "intensely": 1.0, "strongly": 1.0,
}

#: Emotion words -> named expression (``wink`` and ``contempt`` get their side later).
WORDS = {
    **dict.fromkeys(["happy", "happiness", "smile", "smiles", "smiling", "smiley", "joy", "joyful", "glad",
                     "cheerful", "delighted", "laugh", "laughing", "grin", "grinning", "pleased"], "happy"),
    **dict.fromkeys(["sad", "sadness", "unhappy", "sorrow", "sorrowful", "crying", "gloomy", "miserable",
                     "depressed", "upset", "frown", "frowning"], "sad"),
    **dict.fromkeys(["surprise", "surprised", "astonished", "amazed", "shocked", "startled", "stunned",
                     "astonishment", "amazement"], "surprise"),
    **dict.fromkeys(["fear", "afraid", "scared", "fearful", "terrified", "frightened", "horrified",
                     "anxious", "panic", "panicked"], "fear"),
    **dict.fromkeys(["anger", "angry", "furious", "mad", "annoyed", "irritated", "rage", "enraged", "cross"],
                    "anger"),
    **dict.fromkeys(["disgust", "disgusted", "grossed", "revolted", "repulsed", "yuck"], "disgust"),
    **dict.fromkeys(["contempt", "contemptuous", "smirk", "smirking", "scornful", "sneer", "sneering",
                     "disdain"], "contempt"),
    **dict.fromkeys(["wink", "winks", "winking"], "wink"),
    **dict.fromkeys(["yawn", "yawning", "gasp", "gasping", "open-mouthed", "gaping"], "jaw_open"),
    **dict.fromkeys(["pout", "pouting", "kiss", "kissing", "pucker", "puckered"], "pout"),
    **dict.fromkeys(["neutral", "expressionless", "calm", "relaxed", "blank", "serious"], "neutral"),
}

#: Words that end the reach of a negation or an adverb (punctuation does too).
CLAUSE_BREAKS = {"but", "and", "then", "with", "while", "yet"}

NEGATIONS = {"not", "no", "never", "without", "isn't", "isnt", "aren't", "arent"}

#: One-sided expressions: side word (or None) -> named expression.
_ONE_SIDED = {"wink": {"left": "wink_left", "right": "wink_right", None: "wink_left"},
              "contempt": {"left": "contempt_left", "right": "contempt", None: "contempt"}}


def _words(text: str) -> list[str]:
    """Lower-case words and punctuation marks (clause ends) in order."""
    return re.findall(r"[a-z][a-z'\-]*|[,.;:!?]", text.lower())


def parse_prompt(text: str) -> list[ExpressionEdit]:
    """A prompt -> the named-expression edits it describes (see the module docstring).

    Raises:
        FaceClipError: the prompt names no expression this parser knows.
    """
    words = _words(text)
    sides = {"left", "right"} & set(words)
    side = sides.pop() if len(sides) == 1 else None
    # "open mouth" / "mouth open" / "jaw open" / "mouth wide open"
    joined = " ".join(words)
    edits: list[ExpressionEdit] = []
    strength, negate = None, False
    for i, w in enumerate(words):
        if w in CLAUSE_BREAKS or not w[0].isalpha():
            strength, negate = None, False
            continue
        if w in NEGATIONS:
            negate = True
            continue
        if w in INTENSITY_WORDS:
            strength = INTENSITY_WORDS[w]
            continue
        name = WORDS.get(w)
        if name is None and w == "open" and re.search(r"\b(mouth|jaw)\b", joined):
            name = "jaw_open"
        if name is None:
            continue
        if not negate:
            if name in _ONE_SIDED:
                name = _ONE_SIDED[name][side]
            if name not in {e.name for e in edits}:
                edits.append(ExpressionEdit(name, strength if strength is not None else DEFAULT_STRENGTH))
        strength, negate = None, False
    if not edits:
        known = sorted(set(WORDS))
        raise FaceClipError(f"the prompt {text!r} names no expression the offline parser knows",
                            hint="use an emotion word such as " + ", ".join(known[:12]) + "... "
                            "(docs/editing.md lists them all), or --expression NAME")
    return edits


def describe(edits: list[ExpressionEdit]) -> str:
    """``"surprise:1.00, wink_left:0.75"``."""
    return ", ".join(f"{e.name}:{e.strength:.2f}" for e in edits)
