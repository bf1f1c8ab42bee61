"""The recurrent rule sets on recognised unrolled cells: per-node overrides for the EB walk, node by node the rules of
the fused ``LSTM``/``GRU`` ops in :mod:`ebr_onnx.rules.recurrent`.

``"caffe"`` (the release, ``shared/spec/caffe-reference.md`` §3.2–3.4): every node of the unit uses its gradient (the
Mul product rule, σ', the ReLU mask, the sums' copies, routing), except the gate sums, which send the whole signal to
their input operand and nothing to the recurrent one (the Eltwise SUM of spec §2.5); the x projections keep their EB
rule (Eq. 8, Z over x only, no bias). A stacked projection ``[x_t, h_{t−1}]·[W; R]`` does both at once: Eq. 8 with
the ``h_{t−1}`` block of its input read as 0. Time is crossed only through ``c`` (LSTM; peepholes are part of the
unit, so their gradient reaches ``c``, as the fused op's) or the direct ``z ⊙ h_{t−1}`` path (GRU; the reset gate,
which acts on the recurrent operand only, gets nothing).

``"excitation"`` (paper Eqs. 1–4 read literally, mass-conserving): gates are constant weights, so ``Mul(gate, v)``
gives ``v`` the whole signal and the gate none; a state sum splits in proportion to its terms (``f ⊙ c_{t−1}`` and
``i ⊙ g``; ``z ⊙ h_{t−1}`` and ``(1 − z) ⊙ h̃``); the activations of ``g``, ``c`` and ``h̃`` pass the signal through;
a gate sum that receives signal splits it in proportion to each operand's positive contribution ``Z⁺ = f(x, W⁺)``
(biases excluded; times ``r`` through the GRU's reset product), so that with the projections' own Eq. 8 below,
``x_t`` and ``h_{t−1}`` share one normaliser ``Z_x⁺ + Z_h⁺`` (``Z_h⁺`` counted where ``h_{t−1}`` carries no signal,
a state input, as the fused ops count ``initial_h``); a stacked projection ``[x_t, h_{t−1}]·[W; R]`` is that
normaliser already and keeps its own Eq. 8. The gates take no signal, so neither do their peepholes. Where a
projection's input has negative entries (tanh units, outside assumption A1) both sides use the positive-contribution
form of the shared Eq. 8 kernel, which the fused ops do not.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..core import registry
from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.graph import ModelGraph, Node
from ..core.numeric import safe_divide, unbroadcast
from ..passes.cells import AnyCell, AnyGateSum, Cell, GateSum, GruCell, StackedGateSum
from ..rules.routing import checked_indices, slices

RuleFn = registry.RuleFn
NeedsFn = Callable[[Node], "list[str] | None"]
_CACHE_PREFIX = "cell_rules.Z:"


def _registry_rule(node: Node, mode: str) -> registry.RuleSpec:
    """The registry's rule of ``node`` in ``mode`` (``"grad"``: its gradient, ``"eb"``: its Eq. 8)."""
    spec = registry.find_rule(node.op_type, mode)
    if spec is None:
        what = "gradient" if mode == "grad" else "EB"
        raise EbrError(f"node {node.name!r} ({node.op_type}) inside a recurrent cell has no {what} rule")
    return spec


def _per_input(ctx: RuleContext, node: Node, given: dict[str, Any]) -> list[Any]:
    return [unbroadcast(ctx.xp, given[t], ctx.shape(t)) if t in given else None for t in node.inputs]


# -- rules ----------------------------------------------------------------------------------------------------------
def _gradient_rule(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """The exact derivative of the op (the release's LSTMUnit backward, spec §3.2)."""
    return _registry_rule(node, "grad").fn(node, ctx, signals)


def _to_operand(keep: str) -> RuleFn:
    def rule(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
        """The whole signal to one operand: a gate sum's input operand (release, spec §2.5, §3.3), the non-gate factor
        of ``Mul(gate, v)`` (Eqs. 1, 3: the gate is a weight), ``h_{t−1}`` of the GRU's ``h_{t−1} − h̃``."""
        return _per_input(ctx, node, {keep: signals[0]})

    return rule


def _pass_through(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """An activation inside the unit passes the signal through unchanged (as the fused ops' excitation rule)."""
    return [signals[0]]


def _proportional(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """A state sum ``Σ_k term_k``: ``p_k = p ⊙ term_k ⊘₀ Σ term`` (Eqs. 1, 3 with the gates as weights; the terms
    are non-negative in a ReLU cell)."""
    xp, p = ctx.xp, signals[0]
    terms = {t: ctx.value(t) for t in node.inputs}
    q = safe_divide(xp, p, sum(terms.values()) + xp.zeros_like(p))
    return _per_input(ctx, node, {t: v * q for t, v in terms.items()})


def _interpolation(z: str, h_prev: str, candidate: str) -> RuleFn:
    def rule(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
        """``h_t = h̃ + z ⊙ (h_{t−1} − h̃)`` read as ``z ⊙ h_{t−1} + (1 − z) ⊙ h̃``: h̃ gets ``p ⊙ (1−z)h̃ ⊘₀ s``, the
        product (and through it ``h_{t−1}``) ``p ⊙ z h_{t−1} ⊘₀ s``, ``s`` = their sum (the fused GRU's rule)."""
        xp, p = ctx.xp, signals[0]
        zv = ctx.value(z)
        keep, write = zv * ctx.value(h_prev), (1 - zv) * ctx.value(candidate)
        q = safe_divide(xp, p, keep + write + xp.zeros_like(p))
        product = node.inputs[1] if node.inputs[0] == candidate else node.inputs[0]
        return _per_input(ctx, node, {product: keep * q, candidate: write * q})

    return rule


class _Contribution:
    """``Z⁺`` of one gate-sum operand: its projection's ``f(x, W⁺)`` (bias excluded; the positive-contribution
    ``f(x⁺, W⁺) + f(x⁻, W⁻)`` where x has negative entries, as :func:`ebr_onnx.rules.linear.excitation`), carried
    forward through the nodes between the projection and the operand (routing; bias adds add nothing; the GRU's
    reset product multiplies by ``r``)."""

    def __init__(self, graph: ModelGraph, projection: str, operand: str, path: Sequence[str]) -> None:
        self.node = graph.node_by_name[projection]
        nodes = [graph.node_by_name[n] for n in path]
        outs = [operand] + [next(t for t in nodes[k - 1].inputs if t in nodes[k].outputs)
                            for k in range(1, len(nodes))]
        ins = outs[1:] + [self.node.outputs[0]]
        self.steps = list(reversed(list(zip(nodes, ins, outs))))
        for node, _, _ in self.steps:
            if node.op_type not in _FORWARD:
                raise EbrError(f"node {node.name!r} ({node.op_type}) between a recurrent projection and its gate sum "
                               "is not supported by the excitation rule set")
        self.weight_at = next(k for k in (0, 1) if graph.is_constant(self.node.inputs[k]))

    @property
    def x(self) -> str:
        return self.node.inputs[1 - self.weight_at]

    def reads(self) -> list[str]:
        """The projection's input, the gate of a reset product, and computed indices of Gather/Slice."""
        return [self.x] + [t for node, into, _ in self.steps if node.op_type in ("Mul", "Gather", "Slice")
                           for t in node.inputs if t and t != into]

    def _forward(self, ctx: RuleContext, x: Any, w: Any) -> Any:
        a, b = (w, x) if self.weight_at == 0 else (x, w)
        if self.node.op_type == "Gemm":
            a = a.T if int(self.node.attr("transA", 0)) else a
            b = b.T if int(self.node.attr("transB", 0)) else b
        return ctx.xp.matmul(a, b)

    def projected(self, ctx: RuleContext) -> Any:
        """``f(x, W⁺)`` of the projection, computed once per walk (with the walk's derived arrays)."""
        return ctx.derived(_CACHE_PREFIX + self.node.name, lambda: self._project(ctx))

    def _project(self, ctx: RuleContext) -> Any:
        xp = ctx.xp
        scale = float(self.node.attr("alpha", 1.0)) if self.node.op_type == "Gemm" else 1.0
        w, x = scale * ctx.value(self.node.inputs[self.weight_at]), ctx.value(self.x)
        if ctx.has_negative(x):
            return self._forward(ctx, xp.maximum(x, 0), xp.maximum(w, 0)) + \
                self._forward(ctx, xp.minimum(x, 0), xp.minimum(w, 0))
        return self._forward(ctx, x, xp.maximum(w, 0))

    def __call__(self, ctx: RuleContext) -> Any:
        z = self.projected(ctx)
        for node, into, out in self.steps:
            z = _FORWARD[node.op_type](ctx, node, z, into, out)
        return z


def _gather(ctx: RuleContext, node: Node, z: Any, into: str, out: str) -> Any:
    axis = int(node.attr("axis", 0)) % z.ndim
    indices = checked_indices(ctx, node, node.inputs[1], z.shape[axis])  # before the take: CuPy's wraps
    return ctx.xp.take(z, ctx.xp.asarray(indices), axis=axis)


def _slice(ctx: RuleContext, node: Node, z: Any, into: str, out: str) -> Any:
    return z[slices(ctx, node, z.shape)]


def _split(ctx: RuleContext, node: Node, z: Any, into: str, out: str) -> Any:
    axis = int(node.attr("axis", 0)) % z.ndim
    sizes = [ctx.shape(o)[axis] for o in node.outputs]
    start = sum(sizes[:node.outputs.index(out)])
    index = [slice(None)] * z.ndim
    index[axis] = slice(start, start + sizes[node.outputs.index(out)])
    return z[tuple(index)]


def _reshape(ctx: RuleContext, node: Node, z: Any, into: str, out: str) -> Any:
    return z.reshape(ctx.shape(out))


def _gate_product(ctx: RuleContext, node: Node, z: Any, into: str, out: str) -> Any:
    return z * ctx.value(node.inputs[1] if node.inputs[0] == into else node.inputs[0])


_FORWARD: dict[str, Callable[[Any, Node, Any, str, str], Any]] = {
    "Gather": _gather, "Slice": _slice, "Split": _split, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Reshape": _reshape, "Flatten": _reshape, "Identity": lambda ctx, node, z, into, out: z,
    "Add": lambda ctx, node, z, into, out: z, "Mul": _gate_product,
}


def _z_split(graph: ModelGraph, gate_sum: GateSum) -> tuple[RuleFn, list[str]]:
    if gate_sum.x_projection is None:
        raise EbrError(f"the excitation rule set needs the x projection of gate sum {gate_sum.name!r}; none "
                       "(MatMul/Gemm with a constant weight) was found")
    parts = {gate_sum.input_operand: _Contribution(graph, gate_sum.x_projection, gate_sum.input_operand,
                                                   gate_sum.input_path)}
    if gate_sum.recurrent_projection is not None:
        parts[gate_sum.recurrent_operand] = _Contribution(graph, gate_sum.recurrent_projection,
                                                          gate_sum.recurrent_operand, gate_sum.recurrent_path)

    def rule(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
        """Gate sum: ``p_k = p ⊙ Z_k⁺ ⊘₀ (Z_x⁺ + Z_h⁺)`` (one Eq. 8 normaliser over x_t and h_{t−1}; an operand that
        carries no signal counts in it and gets nothing)."""
        xp, p = ctx.xp, signals[0]
        z = {t: part(ctx) for t, part in parts.items()}
        q = safe_divide(xp, p, sum(z.values()) + xp.zeros_like(p))
        return _per_input(ctx, node, {t: v * q for t, v in z.items() if ctx.is_signal(t)})

    return rule, [t for part in parts.values() for t in part.reads()]


class _Reading:
    """A view of the rule context in which one tensor reads as another array."""

    def __init__(self, ctx: RuleContext, name: str, value: Any) -> None:
        self._ctx, self._name, self._value = ctx, name, value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def value(self, name: str) -> Any:
        return self._value if name == self._name else self._ctx.value(name)


def _without_block(ctx: RuleContext, concat: Node, operand: str) -> Any:
    """The value of ``concat``'s output with the block of its input ``operand`` set to 0."""
    out = ctx.xp.array(ctx.value(concat.outputs[0]), copy=True)
    axis = int(concat.attr("axis")) % out.ndim
    start = sum(ctx.shape(t)[axis] for t in concat.inputs[:list(concat.inputs).index(operand)])
    index = [slice(None)] * out.ndim
    index[axis] = slice(start, start + ctx.shape(operand)[axis])
    out[tuple(index)] = 0
    return out


def _x_block(gate_sum: StackedGateSum) -> RuleFn:
    def rule(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
        """A stacked projection ``[x_t, h_{t−1}]·[W; R]`` under the release's rules: the projection's own Eq. 8 with
        the ``h_{t−1}`` block of its input read as 0, so ``Z = W⁺x_t`` and ``h_{t−1}`` gets nothing (the x projection
        of spec §3.3 and the Eltwise SUM's cut of ``R h_{t−1}``, §2.5)."""
        concat = ctx.graph.node_by_name[gate_sum.concat]
        masked = _without_block(ctx, concat, gate_sum.recurrent_operand)
        return _registry_rule(node, "eb").fn(node, _Reading(ctx, concat.outputs[0], masked), signals)

    return rule


# -- the composite --------------------------------------------------------------------------------------------------
_Table = dict[str, tuple[RuleFn, NeedsFn]]


def _nothing(node: Node) -> list[str]:
    return []


def _inputs(node: Node) -> list[str]:
    return list(node.inputs)


def _caffe(graph: ModelGraph, unit: Sequence[str], sums: Sequence[AnyGateSum], table: _Table) -> None:
    for name in unit:
        spec = _registry_rule(graph.node_by_name[name], "grad")
        table[name] = (_gradient_rule, lambda n, spec=spec: list(spec.needs(n)))
    for s in sums:
        if isinstance(s, StackedGateSum):  # reads its input, and the Concat's inputs for their shapes
            blocks = list(graph.node_by_name[s.concat].inputs)
            table[s.name] = (_x_block(s), lambda n, blocks=blocks: list(n.inputs) + blocks)
        else:
            table[s.name] = (_to_operand(s.input_operand), _nothing)


def _other(graph: ModelGraph, mul: str, gate: str) -> str:
    """The operand of ``mul`` that is not the gate tensor ``gate``."""
    inputs = graph.node_by_name[mul].inputs
    return inputs[1] if inputs[0] == gate else inputs[0]


def _split_at(graph: ModelGraph, gate_sum: AnyGateSum, table: _Table) -> None:
    if isinstance(gate_sum, StackedGateSum):
        return  # the stacked projection's own Eq. 8 has the shared normaliser Z_x⁺ + Z_h⁺
    rule, reads = _z_split(graph, gate_sum)
    table[gate_sum.name] = (rule, lambda n, reads=reads: list(reads))


def _lstm_excitation(graph: ModelGraph, cell: Cell, table: _Table) -> None:
    output = lambda name: graph.node_by_name[name].outputs[0]  # noqa: E731
    table[cell.forget_product] = (_to_operand(cell.c_prev), _nothing)
    table[cell.input_product] = (_to_operand(output(cell.gates["g"])), _nothing)
    table[cell.h_product] = (_to_operand(output(cell.cell_activation)), _nothing)
    table[cell.cell_sum] = (_proportional, _inputs)
    table[cell.gates["g"]] = table[cell.cell_activation] = (_pass_through, _nothing)
    _split_at(graph, cell.gate_sum, table)


def _gru_excitation(graph: ModelGraph, cell: GruCell, table: _Table) -> None:
    z, candidate = cell.update, graph.node_by_name[cell.gates["h"]].outputs[0]
    if cell.form == "mix":
        table[cell.state["sum"]] = (_proportional, _inputs)
        table[cell.state["keep"]] = (_to_operand(_other(graph, cell.state["keep"], z)), _nothing)
        table[cell.state["write"]] = (_to_operand(candidate), _nothing)
    else:
        needs = [z, cell.h_prev, candidate]
        table[cell.state["sum"]] = (_interpolation(z, cell.h_prev, candidate), lambda n: list(needs))
        table[cell.state["product"]] = (_to_operand(_other(graph, cell.state["product"], z)), _nothing)
        table[cell.state["difference"]] = (_to_operand(cell.h_prev), _nothing)
    table[cell.gates["h"]] = (_pass_through, _nothing)
    table[cell.reset_product] = (_to_operand(_other(graph, cell.reset_product, cell.reset)), _nothing)
    _split_at(graph, cell.sums["h"], table)


def _rule_table(graph: ModelGraph, cells: Sequence[AnyCell], recurrent_rules: str) -> _Table:
    table: _Table = {}
    for cell in cells:
        sums = [cell.gate_sum] if isinstance(cell, Cell) else list(cell.sums.values())
        if recurrent_rules == "caffe":
            _caffe(graph, cell.unit_nodes, sums, table)
        elif isinstance(cell, Cell):
            _lstm_excitation(graph, cell, table)
        else:
            _gru_excitation(graph, cell, table)
    return table


def cell_overrides(graph: ModelGraph, cells: Sequence[AnyCell], recurrent_rules: str) -> dict[str, RuleFn]:
    """Node name → rule for every node the rule set ``recurrent_rules`` (``"caffe"`` or ``"excitation"``) changes;
    for ``RuleContext.overrides`` of an EB walk (the gradient walk needs no overrides)."""
    return {name: fn for name, (fn, _) in _rule_table(graph, cells, recurrent_rules).items()}


def cell_needs(graph: ModelGraph, cells: Sequence[AnyCell], recurrent_rules: str) -> NeedsFn:
    """The ``overrides_needs`` hook of :func:`ebr_onnx.core.walk.required_values`: the tensors an overridden node's rule
    reads, or ``None`` for nodes that keep their registry rule."""
    needs = {name: fn for name, (_, fn) in _rule_table(graph, cells, recurrent_rules).items()}

    def hook(node: Node) -> list[str] | None:
        fn = needs.get(node.name)
        return None if fn is None else fn(node)

    return hook
