"""Which backward the release runs for each layer (``Layer::Backward`` dispatching on ``Caffe::mode()``, spec §2.0):
in EB mode the layers with a ``Backward_eb_*`` override run the release's EB rule — the engine's ``"eb"`` rules, the
LSTM with its ``"caffe"`` cell rule set — LRN, BatchNorm and Scale copy the top diff into bottom 0 (§2.4), and every
other layer runs its gradient; outside EB mode every layer runs its gradient."""
from __future__ import annotations

from converters.caffe.schema import EltwiseParameter

from .errors import NotOffered
from .layout import LayerSpec

#: Layer types whose EB override is the engine's EB rule (Eq. 8, argmax routing, AVE-pool shares, the LSTM's).
EB_RULES = frozenset({"InnerProduct", "Convolution", "Pooling", "LSTM"})
#: Layer types whose EB override copies the top diff into bottom 0, ignoring their factors (spec §2.4).
EB_COPIES = frozenset({"LRN", "BatchNorm", "Scale"})


def backward_kind(spec: LayerSpec, eb: bool) -> str:
    """``"eb"`` (a walk with the EB rules), ``"grad"`` (a walk with the gradient rules) or ``"copy"``."""
    if not eb:
        return "grad"
    if spec.type in EB_RULES:
        return "eb"
    if spec.type in EB_COPIES:
        return "copy"
    if spec.type == "Eltwise":
        return _eltwise(spec)
    return "grad"


def _eltwise(spec: LayerSpec) -> str:
    """Eltwise EB (spec §2.5): SUM sends the top diff to bottom 1 alone (the engine's ``add_rule="caffe"``), MAX
    routes as its gradient, PROD has no EB rule (the release aborts)."""
    p = spec.param.eltwise_param
    operation = EltwiseParameter.EltwiseOp.Name(p.operation)
    call = f"net.backward in EB mode through layer '{spec.name}' (Eltwise {operation})"
    if operation == "PROD":
        raise NotOffered(call, "the release has no EB rule for a product (it aborts: NOT IMPLEMENTED)")
    if operation == "MAX":
        return "grad"
    if len(spec.bottoms) != 2 or any(c != 1 for c in p.coeff):
        raise NotOffered(call, "the release's EB rule for a sum of more than two bottoms or with coefficients")
    return "eb"
