"""Recognising LSTM and GRU steps written in primitive ops (a pure pass over the graph; nothing is rewritten).

An unrolled LSTM step computes (any gate order, any names; spec §3.1–3.2 for the release's form)::

    a        = R h_{t-1} (+ b_R)  +  W x_t (+ b_W)        gate sum: Add(recurrent operand, input operand)
    a_i, a_f, a_o, a_g = Split/Slice/Gather(a)          (bias adds may sit in between, e.g. TF's forget bias)
    c_t      = Mul(σ(a_f) [· cont_t], c_{t-1}) + Mul(σ(a_i), act(a_g))
    h_t      = Mul(σ(a_o), act(c_t))

and an unrolled GRU step (gate sums per gate; ``h̃`` with the reset gate on the recurrent operand)::

    z = σ(a_z),  r = σ(a_r),  h̃ = act(W_h x_t + r ⊙ (R_h h_{t-1} + b))   or   act(W_h x_t + R_h (r ⊙ h_{t-1}))
    h_t = z ⊙ h_{t-1} + (1 − z) ⊙ h̃     ("mix", Keras)   or   h̃ + z ⊙ (h_{t-1} − h̃)   ("interpolate", PyTorch)

The matcher starts from the state update (an ``Add`` of the products above), traces each gate's pre-activation up
through routing ops, bias adds and peephole adds to its gate sum (the first ``Add`` of two input-dependent operands,
or a stacked projection), and chains the steps through ``c`` (LSTM) or ``h`` (GRU). Each gate sum's recurrent operand
is the one that reaches ``h_{t-1}`` (for the first step: the constant one, or the one projected with the later steps'
recurrent weight); the other is the input operand, traced to its x projection (a MatMul/Gemm with a constant weight)
whose other input is the per-step input ``x_inputs``. The forms recognised:

* **Separate projections** ``W x_t`` and ``R h_{t-1}`` summed by an ``Add`` (:class:`GateSum`): PyTorch's
  ``LSTMCell``/``GRUCell`` loops (both exporters), the Caffe converter's unrolled ``LSTM`` (``cont`` products
  included), Keras cells and tf2onnx ``Loop`` bodies once unrolled by :mod:`ebr_onnx.passes.unroll`.
* **One stacked projection** ``a = [x_t, h_{t-1}] · [W; R]`` (:class:`StackedGateSum`): one MatMul/Gemm with a
  constant weight over ``Concat([x_t, h_{t-1}])`` (either order) plays the gate sum, its two Concat inputs the
  operands; the gates are then split in the cell's own order (TF1 ``BasicLSTMCell``: i, j = c, f, o, with the forget
  bias added after the split). The GRU's candidate reads ``Concat([x_t, r ⊙ h_{t-1}])`` (TF1 ``GRUCell``).
* **One σ over several gates**: a gate may be routed (Split/Slice) out of one Sigmoid over all of them (TF1
  ``GRUCell``'s ``r, u = split(σ(a))``, hand-written ``i, f, o = σ(a[:, :3H]).chunk(3)``).
* **Peepholes** (ONNX ``LSTM``'s ``P``): ``a_i`` and ``a_f`` may add ``P_i ⊙ c_{t-1}``, ``P_f ⊙ c_{t-1}`` and ``a_o``
  may add ``P_o ⊙ c_t`` (a Mul of a constant and the cell state) between the gate sum and the gate; those adds and
  products are part of the unit (:attr:`Cell.peepholes`).
* **Stateful single steps**: ``h_{t-1}`` and ``c_{t-1}`` may be model inputs (a streaming model run one chunk at a
  time, the new state among its outputs). ``sources`` of :func:`find_cells` names the explained input: tensors that do
  not depend on it are the step's constants, so a state input is told apart from ``x_t`` as a constant initial state
  is, and its projection is still recorded (the excitation rules' normaliser counts ``R⁺h_{t-1}`` as the fused op's
  does for ``initial_h``).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Union

from ..core.graph import ModelGraph, Node
from ..core.ops import MATRIX_OPS, ROUTING_OPS

#: Activations of the cell input and the cell state (``act`` above).
ACTIVATIONS = frozenset({"Tanh", "Relu"})
#: How far up (in nodes) a recurrent operand may be from ``h_{t-1}``.
_REACH = 8


@dataclass(frozen=True)
class GateSum:
    """An ``Add`` of a recurrent and an input operand, each traced to its projection.

    ``*_path`` are the nodes from the operand up to (excluding) its projection (routing ops, bias adds and, for the
    GRU's candidate, the reset-gate product); a projection is ``None`` where the operand is constant (zero initial
    state folded by an exporter). ``x_inputs`` are the tensors the x projection reads: the RNN→CNN boundary candidates.
    """

    name: str
    recurrent_operand: str
    input_operand: str
    recurrent_projection: str | None
    x_projection: str | None
    recurrent_path: tuple[str, ...]
    input_path: tuple[str, ...]
    x_inputs: tuple[str, ...]


@dataclass(frozen=True)
class StackedGateSum:
    """A MatMul/Gemm ``name`` with a constant weight ``[W; R]`` over ``Concat([x_t, h_{t-1}])`` (node ``concat``): the
    gate sum of a step whose two projections are one. ``input_operand`` is ``x_t`` and ``recurrent_operand``
    ``h_{t-1}`` (``r ⊙ h_{t-1}`` for a GRU candidate), both inputs of the Concat."""

    name: str
    concat: str
    recurrent_operand: str
    input_operand: str

    @property
    def x_inputs(self) -> tuple[str, ...]:
        return (self.input_operand,)


AnyGateSum = Union[GateSum, StackedGateSum]


@dataclass(frozen=True)
class Cell:
    """One unrolled LSTM step: node names by role and the tensors that connect it to its neighbours.

    ``step`` is the position in its chain (0 = first) and ``chain`` the chain's index (one per layer and direction).
    ``gates`` maps ``i``, ``f``, ``o`` to their Sigmoid nodes and ``g`` to its activation node;
    ``forget_gate_product`` is Caffe's ``Mul(cont_t, σ(a_f))`` (else ``None``); ``peepholes`` are the products
    ``P ⊙ c`` added to the gates' pre-activations. ``h_prev`` is ``None`` at a chain's first step (a constant or a
    state input). ``unit_nodes`` are the nodes after the gate sum up to ``c_t`` and ``h_t`` (routing, bias and peephole
    adds, peephole products, gates, products, sums, activations).
    """

    chain: int
    step: int
    gate_sum: AnyGateSum
    gates: dict[str, str] = field(hash=False, compare=False)
    forget_gate_product: str | None
    forget_product: str
    input_product: str
    cell_sum: str
    cell_activation: str
    h_product: str
    peepholes: tuple[str, ...]
    c_prev: str
    h_prev: str | None
    c: str
    h: str
    unit_nodes: tuple[str, ...]

    @property
    def x_inputs(self) -> tuple[str, ...]:
        return self.gate_sum.x_inputs


@dataclass(frozen=True)
class GruCell:
    """One unrolled GRU step. ``sums`` holds the gate sums ``z``, ``r`` and ``h`` (the candidate's, whose recurrent
    operand carries the reset gate; ``z`` and ``r`` may share one); ``gates`` the Sigmoid nodes ``z``, ``r`` (one node
    where both are split from one σ) and the candidate activation ``h``; ``update`` and ``reset`` the gate tensors as
    the state update and the reset product ``reset_product`` read them; ``form`` is ``"mix"`` (``state`` roles
    ``sum``, ``keep`` = z⊙h_{t−1}, ``write`` = (1−z)⊙h̃, ``complement`` = 1−z) or ``"interpolate"`` (``sum``,
    ``product`` = z⊙(h_{t−1}−h̃), ``difference``)."""

    chain: int
    step: int
    sums: dict[str, AnyGateSum] = field(hash=False, compare=False)
    gates: dict[str, str] = field(hash=False, compare=False)
    update: str
    reset: str
    reset_product: str
    form: str
    state: dict[str, str] = field(hash=False, compare=False)
    h_prev: str
    h: str
    unit_nodes: tuple[str, ...]

    @property
    def x_inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for s in self.sums.values() for t in s.x_inputs))


AnyCell = Union[Cell, GruCell]


@dataclass(frozen=True)
class _Gate:
    """A gate factor of a product: its Sigmoid, the gate tensor the product reads, the nodes in between (routing
    ops, Caffe's ``cont`` product) and that ``cont`` product (else ``None``)."""

    sigmoid: Node
    tensor: str
    nodes: tuple[str, ...]
    cont: Node | None = None


@dataclass
class _Lstm:
    """A matched LSTM state update before chaining (operands not yet told apart)."""

    sum_node: Node
    forget_product: Node
    input_product: Node
    forget_gate_product: Node | None
    gates: dict[str, Node]
    cell_activation: Node
    h_product: Node
    gate_sum: Node
    peepholes: list[str]
    prev: str  # c_{t-1}
    unit_nodes: list[str]


@dataclass
class _Gru:
    """A matched GRU state update before chaining."""

    sum_node: Node
    form: str
    state: dict[str, Node]
    gates: dict[str, Node]
    update: str
    reset: str
    sums: dict[str, Node]
    reset_product: Node
    recurrent_h: str  # the candidate sum's operand that carries r
    prev: str  # h_{t-1}
    unit_nodes: list[str]


class _Matcher:
    def __init__(self, graph: ModelGraph, sources: Iterable[str]) -> None:
        self.g = graph
        self.sources = list(sources)

    @cached_property
    def live(self) -> set[str]:
        """Tensors that depend on the sources (the rest are constants of the step: folded or not, state inputs)."""
        return self.g.signal_tensors(self.sources)

    def op(self, tensor: str) -> str | None:
        node = self.g.producer.get(tensor)
        return node.op_type if node is not None else None

    def made_by(self, tensor: str, ops: frozenset[str] | str) -> Node | None:
        node = self.g.producer.get(tensor)
        return node if node is not None and node.op_type in ({ops} if isinstance(ops, str) else ops) else None

    def bias_add_operand(self, node: Node) -> str | None:
        """The live operand of an ``Add`` whose other operand is constant (a bias add), else ``None``."""
        if node.op_type != "Add" or len(node.inputs) != 2:
            return None
        live = [t for t in node.inputs if t in self.live]
        return live[0] if len(live) == 1 else None

    def peephole(self, node: Node, states: frozenset[str]) -> tuple[str, Node] | None:
        """``(v, Mul)`` of a peephole add ``v + P ⊙ s`` (``P`` constant, ``s`` one of ``states``), else ``None``."""
        if node.op_type != "Add" or len(node.inputs) != 2 or not states:
            return None
        for k in (0, 1):
            mul = self.made_by(node.inputs[k], "Mul")
            if mul is not None and len(mul.inputs) == 2 and any(
                    s in states and p not in self.live for s, p in (mul.inputs, mul.inputs[::-1])):
                return node.inputs[1 - k], mul
        return None

    def trace_up(self, tensor: str, states: frozenset[str] = frozenset()) -> list[tuple[str, Node | None]]:
        """``tensor`` and its ancestors through routing ops, bias adds and peephole adds on ``states``, each with its
        producer."""
        out: list[tuple[str, Node | None]] = []
        while True:
            node = self.g.producer.get(tensor)
            out.append((tensor, node))
            if node is None:
                return out
            if node.op_type in ROUTING_OPS:
                tensor = node.inputs[0]
            elif (operand := self.bias_add_operand(node)) is not None:
                tensor = operand
            elif (peephole := self.peephole(node, states)) is not None:
                tensor = peephole[0]
            else:
                return out

    def stacked_concat(self, node: Node) -> Node | None:
        """The ``Concat`` of two tensors that ``node``, a MatMul/Gemm with a constant weight, reads, else ``None``."""
        if node.op_type not in MATRIX_OPS:
            return None
        data = [t for t in node.inputs[:2] if not self.g.is_constant(t)]
        concat = self.made_by(data[0], "Concat") if len(data) == 1 else None
        return concat if concat is not None and len(concat.inputs) == 2 else None

    def operand_pair(self, node: Node) -> tuple[str, str]:
        """The two operands a gate sum joins: an ``Add``'s inputs or a stacked projection's Concat inputs."""
        concat = self.stacked_concat(node)
        a, b = (concat or node).inputs[:2]
        return a, b

    def gate_sum(self, starts: list[str], states: frozenset[str] = frozenset()) -> tuple[Node, list[str]] | None:
        """The gate sum above the common pre-activation of ``starts`` (gate inputs) and the nodes between them: an
        ``Add`` of two live operands or a stacked projection (``states``: the cell states peepholes read)."""
        chains = [self.trace_up(t, states) for t in starts]
        shared = set.intersection(*({t for t, _ in c} for c in chains))
        first = next((pos for pos, (t, _) in enumerate(chains[0]) if t in shared), None)
        if first is None:
            return None
        between = [n.name for c in chains for t, n in c if t not in shared and n is not None]
        above = chains[0][first:]
        top = above[-1][1]
        joins = top is not None and (self.stacked_concat(top) is not None or (
            top.op_type == "Add" and len(top.inputs) == 2 and all(t in self.live for t in top.inputs)))
        if joins:
            return top, between + [n.name for _, n in above[:-1] if n is not None]
        # The recurrent operand is constant here (a zero initial state folded, or a state input): the topmost add
        # of a projected constant (R h_{t-1} of a state input), else the topmost bias add, sums.
        adds = [pos for pos, (_, n) in enumerate(above) if n is not None and n.op_type == "Add"]
        if not adds:
            return None
        projected = [pos for pos in adds if any(
            t not in self.live and self.projection(t)[0] is not None for t in above[pos][1].inputs)]
        pos = (projected or adds)[-1]
        return above[pos][1], between + [n.name for _, n in above[:pos] if n is not None]

    # -- gates --------------------------------------------------------------------------------------------------
    def gate(self, tensor: str) -> _Gate | None:
        """The gate ``tensor`` is: a Sigmoid's output, directly or through routing ops (one σ over several gates)."""
        path, node = [], self.g.producer.get(tensor)
        while node is not None and node.op_type in ROUTING_OPS:
            path.append(node.name)
            node = self.g.producer.get(node.inputs[0])
        return _Gate(node, tensor, tuple(path)) if node is not None and node.op_type == "Sigmoid" else None

    def gate_factor(self, tensor: str) -> _Gate | None:
        """The gate of σ(·) or of Caffe's ``Mul(cont, σ(·))`` (``cont`` set), else ``None``."""
        if (found := self.gate(tensor)) is not None:
            return found
        if (node := self.made_by(tensor, "Mul")) is not None:
            gates = [g for g in map(self.gate, node.inputs) if g is not None]
            if len(gates) == 1:
                return _Gate(gates[0].sigmoid, gates[0].tensor, gates[0].nodes + (node.name,), node)
        return None

    def split_product(self, node: Node, other_ops: frozenset[str] | None) -> tuple[_Gate, str] | None:
        """``(gate, other operand)`` of a Mul with one gate factor (the other made by ``other_ops``)."""
        if node.op_type != "Mul" or len(node.inputs) != 2:
            return None
        for k in (0, 1):
            gate, other = self.gate_factor(node.inputs[k]), node.inputs[1 - k]
            if gate is not None and (other_ops is None or self.op(other) in other_ops):
                return gate, other
        return None

    # -- LSTM ---------------------------------------------------------------------------------------------------
    def h_product(self, c: str) -> tuple[Node, Node, _Gate] | None:
        """``(act(c_t), Mul, σ(a_o))`` for ``h_t = σ(a_o) ⊙ act(c_t)`` among the consumers of ``c_t``."""
        for act in self.g.consumers.get(c, []):
            if act.op_type not in ACTIVATIONS:
                continue
            for mul in self.g.consumers.get(act.outputs[0], []):
                if mul.op_type == "Mul" and len(mul.inputs) == 2:
                    gate = self.gate(mul.inputs[1] if mul.inputs[0] == act.outputs[0] else mul.inputs[0])
                    if gate is not None:
                        return act, mul, gate
        return None

    def lstm(self, add: Node) -> _Lstm | None:
        muls = [self.made_by(t, "Mul") for t in add.inputs]
        if len(muls) != 2 or None in muls:
            return None
        for fp, ip in (muls, muls[::-1]):
            inp, fgt = self.split_product(ip, ACTIVATIONS), self.split_product(fp, None)
            if inp is None or fgt is None or inp[0].cont is not None:
                continue
            (i_gate, g_out), (f_gate, c_prev) = inp, fgt
            found = self.h_product(add.outputs[0])
            if found is None:
                continue
            act_c, h_mul, o_gate = found
            gates = {"i": i_gate.sigmoid, "f": f_gate.sigmoid, "o": o_gate.sigmoid, "g": self.g.producer[g_out]}
            states = frozenset({c_prev, add.outputs[0]})
            summed = self.gate_sum([n.inputs[0] for n in gates.values()], states)
            if summed is None:
                continue
            peepholes = [p[1].name for name in summed[1]
                         if (p := self.peephole(self.g.node_by_name[name], states)) is not None]
            unit = summed[1] + peepholes + [n.name for n in gates.values()] + [
                name for gate in (i_gate, f_gate, o_gate) for name in gate.nodes] + [
                n.name for n in (fp, ip, add, act_c, h_mul)]
            return _Lstm(add, fp, ip, f_gate.cont, gates, act_c, h_mul, summed[0], peepholes, c_prev,
                         list(dict.fromkeys(unit)))
        return None

    # -- GRU ----------------------------------------------------------------------------------------------------
    def gru_state(self, add: Node) -> tuple[str, dict[str, Node], _Gate, Node, str] | None:
        """``(form, state nodes, z, h̃ activation, h_{t-1})`` of a GRU state update, else ``None``."""
        a, b = add.inputs
        for m_t, hh in ((a, b), (b, a)):  # interpolate: h̃ + z ⊙ (h_{t-1} − h̃)
            act, mul = self.made_by(hh, ACTIVATIONS), self.made_by(m_t, "Mul")
            if act is None or mul is None:
                continue
            for k in (0, 1):
                z, diff = self.gate(mul.inputs[k]), self.made_by(mul.inputs[1 - k], "Sub")
                if z is not None and diff is not None and diff.inputs[1] == hh:
                    return "interpolate", {"sum": add, "product": mul, "difference": diff}, z, act, diff.inputs[0]
        muls = [self.made_by(t, "Mul") for t in (a, b)]
        if None in muls:
            return None
        for keep, write in (muls, muls[::-1]):  # mix: z ⊙ h_{t-1} + (1 − z) ⊙ h̃
            for k in (0, 1):
                comp, act = self.made_by(write.inputs[k], "Sub"), self.made_by(write.inputs[1 - k], ACTIVATIONS)
                z = None if comp is None else self.gate(comp.inputs[1])
                if act is None or z is None or not self.g.is_constant(comp.inputs[0]) or z.tensor not in keep.inputs:
                    continue
                prev = keep.inputs[1] if keep.inputs[0] == z.tensor else keep.inputs[0]
                return "mix", {"sum": add, "keep": keep, "write": write, "complement": comp}, z, act, prev
        return None

    def reset_operand(self, candidate_sum: Node) -> tuple[str, Node, _Gate] | None:
        """``(operand, reset Mul, r)``: the candidate sum's operand carrying the reset gate, as ``r ⊙ (R_h h + b)``
        or ``R_h (r ⊙ h)`` (through routing ops and bias adds), or the ``r ⊙ h`` a stacked projection reads."""
        for operand in self.operand_pair(candidate_sum):
            for _, node in self.trace_up(operand):
                if node is None:
                    break
                if node.op_type in MATRIX_OPS:
                    node = next((self.g.producer[t] for t in node.inputs[:2] if self.op(t) == "Mul"), None)
                    if node is None:
                        break
                if node.op_type == "Mul":
                    gates = [g for g in map(self.gate, node.inputs) if g is not None]
                    if len(gates) == 1:
                        return operand, node, gates[0]
                    break
        return None

    def gru(self, add: Node) -> _Gru | None:
        state = self.gru_state(add)
        if state is None:
            return None
        form, nodes, z, act, prev = state
        cand = self.gate_sum([act.inputs[0]])
        if cand is None:
            return None
        reset = self.reset_operand(cand[0])
        if reset is None:
            return None
        rec_h, reset_mul, r = reset
        z_sum, r_sum = self.gate_sum([z.sigmoid.inputs[0]]), self.gate_sum([r.sigmoid.inputs[0]])
        if z_sum is None or r_sum is None:
            return None
        unit = z_sum[1] + r_sum[1] + cand[1] + [z.sigmoid.name, r.sigmoid.name, act.name, reset_mul.name] + list(
            z.nodes + r.nodes) + [n.name for n in nodes.values()]
        return _Gru(add, form, nodes, {"z": z.sigmoid, "r": r.sigmoid, "h": act}, z.tensor, r.tensor,
                    {"z": z_sum[0], "r": r_sum[0], "h": cand[0]}, reset_mul, rec_h, prev, list(dict.fromkeys(unit)))

    # -- operands -----------------------------------------------------------------------------------------------
    def projection(self, operand: str) -> tuple[Node | None, list[str]]:
        """The MatMul/Gemm with a constant weight that ``operand`` comes from, and the nodes in between."""
        path: list[str] = []
        for _, node in self.trace_up(operand):
            if node is None:
                break
            if node.op_type in MATRIX_OPS and sum(self.g.is_constant(t) for t in node.inputs[:2]) == 1:
                return node, path
            path.append(node.name)
        return None, path

    def weight_of(self, operand: str) -> str | None:
        node = self.projection(operand)[0]
        return None if node is None else next(t for t in node.inputs[:2] if self.g.is_constant(t))

    def distance(self, start: str, target: str) -> int | None:
        """Number of nodes from ``target`` up to ``start`` (breadth-first, at most ``_REACH``), or ``None``."""
        seen, queue = {start}, deque([(start, 0)])
        while queue:
            tensor, depth = queue.popleft()
            if tensor == target:
                return depth
            node = self.g.producer.get(tensor)
            if node is None or depth >= _REACH:
                continue
            for t in node.inputs:
                if t and t not in seen:
                    seen.add(t)
                    queue.append((t, depth + 1))
        return None

    def operands(self, sums: list[Node], h_prevs: list[str | None]) -> list[tuple[str, str] | None]:
        """(recurrent, input) operand of each step's gate sum, or ``None`` where they cannot be told apart."""
        out: list[tuple[str, str] | None] = []
        for node, h_prev in zip(sums, h_prevs):
            a, b = self.operand_pair(node)
            da, db = (None, None) if h_prev is None else (self.distance(a, h_prev), self.distance(b, h_prev))
            if da is not None and (db is None or da < db):
                out.append((a, b))
            elif db is not None and (da is None or db < da):
                out.append((b, a))
            else:
                out.append(None)
        weights = {self.weight_of(p[0]) for p in out if p is not None} - {None}
        for pos, node in enumerate(sums):
            if out[pos] is not None:
                continue
            a, b = self.operand_pair(node)
            const = [t for t in (a, b) if t not in self.live]
            matches = const if len(const) == 1 else [t for t in (a, b) if self.weight_of(t) in weights]
            if len(matches) == 1:
                out[pos] = (matches[0], b if matches[0] == a else a)
        return out

    def record(self, node: Node, rec: str, inp: str, reset: Node | None = None) -> AnyGateSum:
        """The gate sum record of ``node``; ``reset`` is the GRU candidate's reset product on the recurrent side."""
        concat = self.stacked_concat(node)
        if concat is not None:
            return StackedGateSum(node.name, concat.name, rec, inp)
        start, prefix = rec, []
        if reset is not None and reset.outputs[0] in {t for t, _ in self.trace_up(rec)}:
            prefix = [n.name for t, n in self.trace_up(rec) if n is not None and t != reset.outputs[0]]
            prefix.append(reset.name)
            start = next(t for t in reset.inputs if self.gate(t) is None)
        rec_proj, rec_path = self.projection(start)
        if rec_proj is None:  # a constant recurrent operand (zero initial state): nothing to trace
            prefix, rec_path = [], []
        x_proj, x_path = self.projection(inp)
        x_inputs = tuple(t for t in x_proj.inputs[:2] if not self.g.is_constant(t)) if x_proj else ()
        return GateSum(node.name, rec, inp, rec_proj.name if rec_proj else None, x_proj.name if x_proj else None,
                       tuple(prefix + rec_path), tuple(x_path), x_inputs)


def _chains(cands: list, m: _Matcher) -> list[list]:
    """Matched steps ordered into chains through their state (identity-like ops between steps are looked through)."""
    by_out = {c.sum_node.outputs[0]: c for c in cands}

    def pred(c):
        return next((by_out[t] for t, _ in m.trace_up(c.prev) if t in by_out), None)

    preds = {id(c): pred(c) for c in cands}
    succ: dict[int, object] = {}
    for c in cands:
        p = preds[id(c)]
        if p is not None:
            succ.setdefault(id(p), c)
    chains = []
    for c in sorted(cands, key=lambda c: c.sum_node.index):
        if preds[id(c)] is None:
            chain, cur = [], c
            while cur is not None:
                chain.append(cur)
                cur = succ.get(id(cur))
            chains.append(chain)
    return chains


def _lstm_cells(m: _Matcher, chain_index: int, chain: list[_Lstm]) -> list[Cell]:
    h_prevs = [None] + [c.h_product.outputs[0] for c in chain[:-1]]
    cells = []
    for step, (cand, pair, h_prev) in enumerate(zip(chain, m.operands([c.gate_sum for c in chain], h_prevs),
                                                    h_prevs)):
        if pair is None:
            continue
        cells.append(Cell(
            chain=chain_index, step=step, gate_sum=m.record(cand.gate_sum, *pair),
            gates={k: n.name for k, n in cand.gates.items()},
            forget_gate_product=cand.forget_gate_product.name if cand.forget_gate_product else None,
            forget_product=cand.forget_product.name, input_product=cand.input_product.name,
            cell_sum=cand.sum_node.name, cell_activation=cand.cell_activation.name, h_product=cand.h_product.name,
            peepholes=tuple(cand.peepholes), c_prev=cand.prev, h_prev=h_prev, c=cand.sum_node.outputs[0],
            h=cand.h_product.outputs[0], unit_nodes=tuple(cand.unit_nodes)))
    return cells


def _gru_cells(m: _Matcher, chain_index: int, chain: list[_Gru]) -> list[GruCell]:
    h_prevs = [c.prev if pos else None for pos, c in enumerate(chain)]
    pairs = {k: m.operands([c.sums[k] for c in chain], h_prevs) for k in ("z", "r")}
    cells = []
    for step, cand in enumerate(chain):
        if pairs["z"][step] is None or pairs["r"][step] is None:
            continue
        a, b = m.operand_pair(cand.sums["h"])
        sums = {k: m.record(cand.sums[k], *pairs[k][step]) for k in ("z", "r")}
        sums["h"] = m.record(cand.sums["h"], cand.recurrent_h, b if a == cand.recurrent_h else a, cand.reset_product)
        cells.append(GruCell(
            chain=chain_index, step=step, sums=sums, gates={k: n.name for k, n in cand.gates.items()},
            update=cand.update, reset=cand.reset, reset_product=cand.reset_product.name, form=cand.form,
            state={k: n.name for k, n in cand.state.items()}, h_prev=cand.prev, h=cand.sum_node.outputs[0],
            unit_nodes=tuple(cand.unit_nodes)))
    return cells


def find_cells(graph: ModelGraph, sources: Iterable[str] | None = None) -> list[AnyCell]:
    """All unrolled LSTM and GRU steps of ``graph``, chain by chain in step order (see the module docstring).
    ``sources``: the tensors the explained signal comes from (default: every model input); tensors that do not depend
    on them, state inputs of a stateful model included, are constants of the step."""
    m = _Matcher(graph, graph.inputs if sources is None else sources)
    adds = [n for n in graph.topological if n.op_type == "Add" and len(n.inputs) == 2]
    lstm = [c for c in (m.lstm(n) for n in adds) if c is not None]
    taken = {c.sum_node.name for c in lstm}
    gru = [c for c in (m.gru(n) for n in adds if n.name not in taken) if c is not None]
    cells: list[AnyCell] = []
    index = 0
    for chain in _chains(lstm, m):
        cells += _lstm_cells(m, index, chain)
        index += 1
    for chain in _chains(gru, m):
        cells += _gru_cells(m, index, chain)
        index += 1
    return cells
