"""The walk's rule options, validated once where they are made (at the API)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import EbrError

#: How EB splits the signal of an Add of two signal tensors: in proportion to each operand's positive part, or as
#: the release's Eltwise SUM on the CPU (all to input 1; ``shared/spec/caffe-reference.md`` §2.5).
ADD_RULES = ("proportional", "caffe")
#: The EB rule sets of recurrent units: the authors' release, or the mass-conserving reading of Eqs. 1–4
#: (:mod:`ebr_onnx.rules.recurrent`).
RECURRENT_RULE_SETS = ("caffe", "excitation")


@dataclass(frozen=True)
class RuleOptions:
    """Options every rule may read: ``add_rule`` (:data:`ADD_RULES`), ``recurrent_rules``
    (:data:`RECURRENT_RULE_SETS`), and ``lowering`` — whether the CPU walk runs its lowerable bottom part as one
    onnxruntime graph (:mod:`ebr_onnx.lowering`)."""

    add_rule: str = "proportional"
    recurrent_rules: str = "caffe"
    lowering: bool = True

    def __post_init__(self) -> None:
        if self.add_rule not in ADD_RULES:
            raise EbrError(f"add_rule {self.add_rule!r} is not one of: {', '.join(ADD_RULES)}")
        if self.recurrent_rules not in RECURRENT_RULE_SETS:
            raise EbrError(f"recurrent_rules {self.recurrent_rules!r} is not one of: "
                           f"{', '.join(RECURRENT_RULE_SETS)}")
