"""Caffe's LSTM layer (``lstm_layer.cpp`` + ``lstm_unit_layer.cpp``), unrolled over time into primitive ops.

The unrolled graph mirrors the net Caffe builds inside the layer (spec §3.1); with L the layer name and t the
0-based step, the tensors are::

    L/x_transform   = MatMul(x, L/W_xc_T) + L/b_c                    (T, N, 4H)  all steps at once
    L/W_xc_x_{t}    = Gather(L/x_transform, t, axis 0)               (N, 4H)
    L/cont_{t}      = Unsqueeze(Gather(cont, t, axis 0), [1])         (N, 1)
    L/h_conted_{t-1} = L/h_{t-1} * L/cont_{t}
    L/W_hc_h_{t-1}  = MatMul(L/h_conted_{t-1}, L/W_hc_T)              no bias
    L/gate_input_{t} = L/W_hc_h_{t-1} + L/W_xc_x_{t}                  (Caffe's Eltwise bottom order)
    L/a_i_{t}, L/a_f_{t}, L/a_o_{t}, L/a_g_{t} = Split(L/gate_input_{t}, 4, axis 1)    gate order i, f, o, g
    L/i_{t}, L/f_{t}, L/o_{t} = Sigmoid(...);   L/g_{t} = act(L/a_g_{t})
    L/c_{t}         = (L/cont_{t} * L/f_{t}) * L/c_{t-1} + L/i_{t} * L/g_{t}
    L/h_{t}         = L/o_{t} * act(L/c_{t})
    top             = Concat_t(Unsqueeze(L/h_{t}, [0]))              (T, N, H)

``act`` is ReLU as in the release's modified LSTMUnit (spec §3.2) or tanh as in upstream Caffe. ``L/h_-1`` and
``L/c_-1`` are zero initializers (cont_0 = 0 flushes them anyway). The initializers ``L/W_xc_T`` (D, 4H) and
``L/W_hc_T`` (H, 4H) hold Caffe's ``W_xc`` and ``W_hc`` transposed; ``L/b_c`` is Caffe's ``b_c``.
"""

from __future__ import annotations

import numpy as np

from .fillers import constant
from .graph import LstmState
from .registry import LayerContext, converter
from .weights import BlobSpec, prototxt_filler

ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh"}


class _Step:
    """Node emission for one time step; all names are ``<layer>/<what>_<t>``."""

    def __init__(self, ctx: LayerContext, t: int) -> None:
        self.ctx, self.t = ctx, t

    def __call__(self, op: str, inputs: list[str], what: str, step: int | None = None, **attrs) -> str:
        name = f"{self.ctx.name}/{what}_{self.t if step is None else step}"
        return self.ctx.graph.add_node(op, inputs, [self.ctx.graph.fresh(name)], name, **attrs)[0]


@converter("LSTM")
def lstm(ctx: LayerContext) -> None:
    """LSTM over x (T, N, D) with clip markers cont (T, N): Caffe's unrolled net, step by step."""
    p = ctx.layer.recurrent_param
    if p.expose_hidden or len(ctx.inputs) != 2:
        raise ctx.error("only the two-bottom form (x, cont) without expose_hidden or a static input is supported")
    x, cont = ctx.inputs
    steps, batch, depth = ctx.shape(0)
    if ctx.shape(1) != (steps, batch):
        raise ctx.error(f"clip markers have shape {ctx.shape(1)}, expected {(steps, batch)}")
    hidden = p.num_output
    if not hidden:
        raise ctx.error("recurrent_param.num_output must be positive")
    filler = prototxt_filler(p, "weight_filler")
    w_xc, b_c, w_hc = ctx.params(
        BlobSpec((4 * hidden, depth), filler),
        BlobSpec((4 * hidden,), prototxt_filler(p, "bias_filler", constant(0.0))),
        BlobSpec((4 * hidden, hidden), filler),
    )
    act = ACTIVATIONS[ctx.options.lstm_activation]
    w_xc_t = ctx.const("W_xc_T", np.ascontiguousarray(w_xc.T))
    w_hc_t = ctx.const("W_hc_T", np.ascontiguousarray(w_hc.T))
    x_mm = ctx.node("MatMul", [x, w_xc_t], suffix="x_transform/MatMul")
    x_transform = ctx.node("Add", [x_mm, ctx.const("b_c", b_c)], suffix="x_transform")
    axes0, axes1 = ctx.const("axes_0", np.array([0], np.int64)), ctx.const("axes_1", np.array([1], np.int64))
    zeros = np.zeros((batch, hidden), np.float32)
    h, c = h0, c0 = ctx.const("h_-1", zeros), ctx.const("c_-1", zeros)
    hs = []
    for t in range(steps):
        node = _Step(ctx, t)
        index = ctx.const(f"step_{t}", np.array(t, np.int64))
        w_xc_x = node("Gather", [x_transform, index], "W_xc_x", axis=0)
        cont_t = node("Unsqueeze", [node("Gather", [cont, index], "cont_row", axis=0), axes1], "cont")
        h_conted = node("Mul", [h, cont_t], "h_conted", step=t - 1)
        w_hc_h = node("MatMul", [h_conted, w_hc_t], "W_hc_h", step=t - 1)
        gate_input = node("Add", [w_hc_h, w_xc_x], "gate_input")
        names = [ctx.graph.fresh(f"{ctx.name}/a_{gate}_{t}") for gate in "ifog"]
        a_i, a_f, a_o, a_g = ctx.graph.add_node("Split", [gate_input], names, f"{ctx.name}/gates_{t}", axis=1)
        i, f, o = (node("Sigmoid", [a], gate) for a, gate in ((a_i, "i"), (a_f, "f"), (a_o, "o")))
        g = node(act, [a_g], "g")
        kept = node("Mul", [node("Mul", [cont_t, f], "cont_f"), c], "f_c")
        c = node("Add", [kept, node("Mul", [i, g], "i_g")], "c")
        h = node("Mul", [o, node(act, [c], "act_c")], "h")
        hs.append(node("Unsqueeze", [h, axes0], "h_seq"))
    ctx.node("Concat", hs, axis=0)
    ctx.graph.clip_markers.append(cont)
    ctx.graph.lstm_steps[ctx.name] = steps
    ctx.graph.lstm_states[ctx.name] = LstmState(h0, c0, h, c)
