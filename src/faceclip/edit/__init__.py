"""Expression editing of reconstructed faces: named expressions, transfer, text prompts.

Python API (the ``faceclip edit`` and ``faceclip expressions`` commands call these)::

    from faceclip.edit import EditRequest, ExpressionEdit, edit_result

    report = edit_result("results/astronaut", "edited/", EditRequest(expressions=(ExpressionEdit("happy", 0.8),)))
    report.files        # mesh.obj ..., params.json, overlay.png, before_after.png
    report.outcome.expression  # (1, 53) the edited blendshape weights

- :mod:`faceclip.edit.expressions`: the named expressions (FACS action units -> ICT blendshapes);
- :mod:`faceclip.edit.prompt`: the offline prompt parser;
- :mod:`faceclip.edit.mapper`: the paper's CLIP-guided mapper;
- :mod:`faceclip.edit.result`: reading a result folder back;
- :mod:`faceclip.edit.render`: textured renders of the edited face;
- :mod:`faceclip.edit.apply`: one edit, start to end.
"""

from faceclip.edit.apply import EditOutcome, EditReport, EditRequest, edit_result, plan_edit, transfer_expression
from faceclip.edit.expressions import ExpressionEdit, apply_expression, named_expressions, resolve
from faceclip.edit.mapper import ExpressionMapper, TextEditConfig, TextEditObjective, optimise_mapper
from faceclip.edit.prompt import parse_prompt
from faceclip.edit.result import ResultFace, load_result

__all__ = [
    "EditOutcome", "EditReport", "EditRequest", "ExpressionEdit", "ExpressionMapper", "ResultFace",
    "TextEditConfig", "TextEditObjective", "apply_expression", "edit_result", "load_result", "named_expressions",
    "optimise_mapper", "parse_prompt", "plan_edit", "resolve", "transfer_expression",
]
