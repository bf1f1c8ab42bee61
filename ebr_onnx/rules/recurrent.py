"""Rules of the fused recurrent ops ``LSTM``, ``GRU`` and ``RNN`` (EB-R, paper Sec. 4;
``shared/spec/caffe-reference.md`` §3).

onnxruntime does not expose the gates, so each rule recomputes them: :func:`_read` takes X, W, R, B, P, the initial
states and ``sequence_lens`` from the walk, one :class:`_LSTM` / :class:`_GRU` / :class:`_RNN` cell per direction
replays the forward with :func:`_step` (all directions and both layouts go through it), and :func:`_backward` runs the
cells' ``back`` in the reverse order. Every cell's pre-activation is ``a = xw_t + (recurrent part)`` with
``xw_t = W x_t + Wb``; a cell's ``back`` returns the signal on ``a`` (or, under ``excitation``, that signal already
divided by its normaliser), the signal on ``h_{t−1}`` and, for the LSTM, on ``c_{t−1}``; the input projection W is
applied once for all steps at the end. Y, Y_h and Y_c may all carry signal; so may ``initial_h`` / ``initial_c``.

Rule sets (mode ``"eb"``; ``ctx.options.recurrent_rules``):

``"caffe"`` (default) — the authors' release (spec §3.2–3.4, layers ``LSTMUnit``, ``Eltwise``, ``x_transform``):

* inside the unit the signal is the **gradient of the unit**. LSTM (i, f, o, g = σ(aⁱ), σ(aᶠ), σ(aᵒ), g(aᶜ);
  ``c_t = f⊙c_{t−1} + i⊙g``, ``h_t = o⊙h(c_t)``)::

      δaᵒ = δh ⊙ h(c_t) ⊙ σ'(aᵒ)            κ = δc + δh ⊙ o ⊙ h'(c_t)  (+ δaᵒ⊙pᵒ with peepholes)
      δaⁱ = κ ⊙ g ⊙ σ'(aⁱ)    δaᶠ = κ ⊙ c_{t−1} ⊙ σ'(aᶠ)    δaᶜ = κ ⊙ i ⊙ g'(aᶜ)
      δc_{t−1} = κ ⊙ f  (+ δaⁱ⊙pⁱ + δaᶠ⊙pᶠ)

  which for the paper's ReLU-LSTM (``activations = [Sigmoid, Relu, Relu]``) is the release's LSTMUnit EB; with other
  activations it is their gradient and a warning says that the ReLU assumption (A1) does not hold;
* the **hidden-to-hidden path gets no signal** (the release's Eltwise-SUM rule): ``δh_{t−1}`` receives nothing from
  ``R h_{t−1}``, so time is crossed only through the cell state; ``initial_h`` gets nothing, ``initial_c`` gets
  ``δc_0``;
* the input projection applies Eq. 8 with the normaliser over the x_t contributions only:
  ``δx_t = x_t ⊙ W⁺ᵀ(δa_t ⊘₀ W⁺x_t)`` (no bias, no ``R h_{t−1}``); biases get nothing.
* GRU (``h_t = (1−z)⊙h̃ + z⊙h_{t−1}``): the gradient inside the unit; the direct path ``z⊙h_{t−1}`` plays the role
  of the cell state (``δh_{t−1} = δh ⊙ z``); the whole hidden-to-hidden term of each pre-activation (``R h_{t−1}``,
  and ``R_h(r⊙h_{t−1})`` or ``r⊙(R_h h_{t−1} + Rb_h)``) is cut, so the reset gate, which acts only there, gets no
  signal; the input projection as above.
* RNN (``h_t = f(a)``): ``δa = δh ⊙ f'(a)``, the R-path cut (each step receives only its own Y signal), the input
  projection as above.

``"excitation"`` — mass-conserving, following Eqs. 1–4 literally: gates are constant weights of the products they
multiply (the other factor takes all the signal; i, f, o, z, r get none); activations pass the signal through;
a sum of non-negative terms splits the signal in proportion to the terms (``⊘₀``); each pre-activation that receives
signal applies Eq. 8 over **all** its non-negative children, x_t and h_{t−1} (bias excluded)::

    LSTM  κ = δc + δh;  δc_{t−1} = κ ⊙ (f⊙c_{t−1}) ⊘₀ s;  δaᶜ = κ ⊙ (i⊙g) ⊘₀ s          s = f⊙c_{t−1} + i⊙g
          q = δaᶜ ⊘₀ (Wᶜ⁺x_t + Rᶜ⁺h_{t−1});  δx_t = x_t ⊙ Wᶜ⁺ᵀq;  δh_{t−1} += h_{t−1} ⊙ Rᶜ⁺ᵀq
    GRU   δh̃ = δh ⊙ (1−z)⊙h̃ ⊘₀ s;  δh_{t−1} = δh ⊙ z⊙h_{t−1} ⊘₀ s                     s = (1−z)⊙h̃ + z⊙h_{t−1}
          q = δh̃ ⊘₀ (W_h⁺x_t + R_h⁺(r⊙h_{t−1}));  δh_{t−1} += (r⊙h_{t−1}) ⊙ R_h⁺ᵀq     (linear_before_reset=0)
          q = δh̃ ⊘₀ (W_h⁺x_t + r⊙R_h⁺h_{t−1});    δh_{t−1} += h_{t−1} ⊙ R_h⁺ᵀ(r⊙q)    (linear_before_reset=1)
    RNN   q = δh ⊘₀ (W⁺x_t + R⁺h_{t−1});  δx_t = x_t ⊙ W⁺ᵀq;  δh_{t−1} += h_{t−1} ⊙ R⁺ᵀq

The total signal at X over all steps plus at the initial states equals the signal at the outputs, except where a
normaliser is 0. Negative children (tanh units) break the assumption; a warning says so.

Mode ``"grad"``: the exact gradient through everything (BP-R).

Supported attributes: ``direction`` (forward, reverse, bidirectional), ``layout`` 0/1, ``activations`` with
``activation_alpha``/``activation_beta`` (consumed, as onnxruntime does, by the activations that take them),
``clip``, ``sequence_lens``, peepholes P, ``linear_before_reset``. ``input_forget=1`` raises :class:`EbrError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..core.activations import ACTIVATIONS
from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.numeric import safe_divide
from ..core.registry import needs_inputs, rule
from .linear import excitation

# -- activations --------------------------------------------------------------------------------------------------
#: The activations of the ONNX recurrent ops (their ``activations`` attribute), from the one activation table.
RECURRENT_ACTIVATIONS = frozenset({"relu", "tanh", "sigmoid", "affine", "leakyrelu", "thresholdedrelu", "scaledtanh",
                                   "hardsigmoid", "elu", "softsign", "softplus"})


@dataclass(frozen=True)
class Activation:
    """One of the recurrent ops' activation functions with its alpha/beta."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    def __call__(self, xp, x):
        return ACTIVATIONS[self.name].value(xp, x, self.alpha, self.beta)

    def derivative(self, xp, x):
        return ACTIVATIONS[self.name].derivative(xp, x, self.alpha, self.beta)


def _activations(node: Node, defaults: tuple[str, ...], directions: int) -> list[tuple[Activation, ...]]:
    """The activations of each direction; alphas and betas are consumed in order by the functions that take them."""
    names = [n.lower() for n in node.attr("activations", list(defaults) * directions)]
    if len(names) != len(defaults) * directions:
        raise EbrError(f"{node.op_type} node {node.name!r} lists {len(names)} activations; "
                       f"{len(defaults) * directions} expected")
    alphas, betas = list(node.attr("activation_alpha", [])), list(node.attr("activation_beta", []))
    acts = []
    for name in names:
        if name not in RECURRENT_ACTIVATIONS:
            raise EbrError(f"{node.op_type} node {node.name!r} uses activation {name!r}; supported: "
                           f"{', '.join(sorted(RECURRENT_ACTIVATIONS))}")
        alpha, beta = ACTIVATIONS[name].alpha, ACTIVATIONS[name].beta
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        acts.append(Activation(name, float(alpha or 0.0), float(beta or 0.0)))
    k = len(defaults)
    return [tuple(acts[d * k:(d + 1) * k]) for d in range(directions)]


# -- cells --------------------------------------------------------------------------------------------------------
class _Cell:
    """Shared parts of a cell: R, the recurrent bias, the clip and the pre-activation helpers."""

    gates = 1
    has_c = False

    def __init__(self, xp, w, wb, r, rb, peep, acts: tuple[Activation, ...], clip: float | None, lbr: int) -> None:
        hidden = r.shape[-1]
        self.xp, self.w, self.wb, self.r_flat, self.rb_flat = xp, w, wb, r, rb
        self.r, self.rb = r.reshape(self.gates, hidden, hidden), rb.reshape(self.gates, hidden)
        self.r_pos = xp.maximum(self.r, 0)
        self.peep, self.acts, self.clip, self.lbr = peep, acts, clip, lbr

    def _clip(self, a):
        return a if self.clip is None else self.xp.clip(a, -self.clip, self.clip)

    def _inside(self, a):
        """The derivative of the clip at the unclipped pre-activation (1 inside, 0 where it clips)."""
        return 1 if self.clip is None else (self.xp.abs(a) <= self.clip).astype(a.dtype)

    def _split(self, a):
        return self.xp.split(a, self.gates, axis=-1)


class _LSTM(_Cell):
    """``a = xw_t + R h_{t−1} + Rb`` in ONNX gate order i, o, f, c; activations (f, g, h) = ``acts``."""

    gates = 4
    has_c = True

    def step(self, xw_t, h, c):
        xp, (fa, ga, ha) = self.xp, self.acts
        a_i, a_o, a_f, a_c = self._split(xw_t + h @ self.r_flat.T + self.rb_flat)
        p_i, p_o, p_f = self.peep if self.peep is not None else (0, 0, 0)
        a_i, a_f, a_c = a_i + p_i * c, a_f + p_f * c, a_c
        i, f, g = fa(xp, self._clip(a_i)), fa(xp, self._clip(a_f)), ga(xp, self._clip(a_c))
        c_new = f * c + i * g
        a_o = a_o + p_o * c_new
        o = fa(xp, self._clip(a_o))
        h_new = o * ha(xp, c_new)
        return h_new, c_new, (a_i, a_o, a_f, a_c, i, o, f, g, c, h, c_new)

    def back(self, rules: str, cache, dh, dc, zx_t):
        xp, (fa, ga, ha) = self.xp, self.acts
        a_i, a_o, a_f, a_c, i, o, f, g, c, h, c_new = cache
        if rules == "excitation":
            kappa = dc + dh
            forget, write = f * c, i * g
            total = forget + write
            dc_prev = kappa * safe_divide(xp, forget, total)
            q_c = safe_divide(xp, kappa * safe_divide(xp, write, total), zx_t[:, 3] + h @ self.r_pos[3].T)
            zero = xp.zeros_like(q_c)
            return (zero, zero, zero, q_c), h * (q_c @ self.r_pos[3]), dc_prev
        da_o = dh * ha(xp, c_new) * fa.derivative(xp, self._clip(a_o)) * self._inside(a_o)
        kappa = dc + dh * o * ha.derivative(xp, c_new)
        p_i, p_o, p_f = self.peep if self.peep is not None else (0, 0, 0)
        kappa = kappa + da_o * p_o
        da_i = kappa * g * fa.derivative(xp, self._clip(a_i)) * self._inside(a_i)
        da_f = kappa * c * fa.derivative(xp, self._clip(a_f)) * self._inside(a_f)
        da_c = kappa * i * ga.derivative(xp, self._clip(a_c)) * self._inside(a_c)
        dc_prev = kappa * f + da_i * p_i + da_f * p_f
        da = (da_i, da_o, da_f, da_c)
        dh_prev = xp.concatenate(da, axis=-1) @ self.r_flat if rules == "grad" else 0 * dh
        return da, dh_prev, dc_prev


class _GRU(_Cell):
    """Gate order z, r, h; activations (f, g) = ``acts``; ``linear_before_reset`` = ``lbr``."""

    gates = 3

    def step(self, xw_t, h, c):
        xp, (fa, ga) = self.xp, self.acts
        x_z, x_r, x_h = self._split(xw_t)
        r_z, r_r, r_h = self.r
        b_z, b_r, b_h = self.rb
        a_z, a_r = x_z + h @ r_z.T + b_z, x_r + h @ r_r.T + b_r
        z, r = fa(xp, self._clip(a_z)), fa(xp, self._clip(a_r))
        lin = h @ r_h.T + b_h if self.lbr else (r * h) @ r_h.T + b_h
        a_h = x_h + (r * lin if self.lbr else lin)
        ht = ga(xp, self._clip(a_h))
        return (1 - z) * ht + z * h, None, (a_z, a_r, a_h, z, r, ht, lin, h)

    def back(self, rules: str, cache, dh, dc, zx_t):
        xp, (fa, ga) = self.xp, self.acts
        a_z, a_r, a_h, z, r, ht, lin, h = cache
        r_z, r_r, r_h = self.r
        if rules == "excitation":
            keep, new = z * h, (1 - z) * ht
            total = keep + new
            dh_prev = dh * safe_divide(xp, keep, total)
            d_ht = dh * safe_divide(xp, new, total)
            if self.lbr:
                q = safe_divide(xp, d_ht, zx_t[:, 2] + r * (h @ self.r_pos[2].T))
                dh_prev = dh_prev + h * ((r * q) @ self.r_pos[2])
            else:
                child = r * h
                q = safe_divide(xp, d_ht, zx_t[:, 2] + child @ self.r_pos[2].T)
                dh_prev = dh_prev + child * (q @ self.r_pos[2])
            zero = xp.zeros_like(q)
            return (zero, zero, q), dh_prev, None
        dh_prev = dh * z
        da_h = dh * (1 - z) * ga.derivative(xp, self._clip(a_h)) * self._inside(a_h)
        da_z = dh * (h - ht) * fa.derivative(xp, self._clip(a_z)) * self._inside(a_z)
        if rules != "grad":  # caffe: the hidden-to-hidden terms, and with them the reset gate, get nothing
            return (da_z, xp.zeros_like(da_z), da_h), dh_prev, None
        if self.lbr:
            d_r = da_h * lin
            dh_prev = dh_prev + (da_h * r) @ r_h
        else:
            d_rh = da_h @ r_h
            d_r = d_rh * h
            dh_prev = dh_prev + d_rh * r
        da_r = d_r * fa.derivative(xp, self._clip(a_r)) * self._inside(a_r)
        return (da_z, da_r, da_h), dh_prev + da_z @ r_z + da_r @ r_r, None


class _RNN(_Cell):
    """``h_t = f(xw_t + R h_{t−1} + Rb)``."""

    def step(self, xw_t, h, c):
        a = xw_t + h @ self.r[0].T + self.rb[0]
        return self.acts[0](self.xp, self._clip(a)), None, (a, h)

    def back(self, rules: str, cache, dh, dc, zx_t):
        xp = self.xp
        a, h = cache
        if rules == "excitation":
            q = safe_divide(xp, dh, zx_t[:, 0] + h @ self.r_pos[0].T)
            return (q,), h * (q @ self.r_pos[0]), None
        da = dh * self.acts[0].derivative(xp, self._clip(a)) * self._inside(a)
        return (da,), (da @ self.r[0] if rules == "grad" else 0 * dh), None


_CELLS = {"LSTM": (_LSTM, ("Sigmoid", "Tanh", "Tanh")), "GRU": (_GRU, ("Sigmoid", "Tanh")), "RNN": (_RNN, ("Tanh",))}
#: Which activations of each op act on the values that carry the signal (the ReLU assumption of EB-R applies there).
_VALUE_ACTIVATIONS = {"LSTM": (1, 2), "GRU": (1,), "RNN": (0,)}


# -- reading the node ---------------------------------------------------------------------------------------------
@dataclass
class _Recurrence:
    """A recurrent node's inputs in the time-major layout: X (T, N, I), per-direction cells and initial states."""

    x: Any
    mask: Any  # (T, N, 1) bool: t < sequence_lens[n]
    cells: list[_Cell]
    h0: Any  # (D, N, H)
    c0: Any  # (D, N, H) or None
    reverse: list[bool]
    layout: int


def _input(node: Node, index: int) -> str:
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] else ""


def _read(node: Node, ctx: RuleContext) -> _Recurrence:
    xp = ctx.xp
    cell_type, defaults = _CELLS[node.op_type]
    direction = node.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise EbrError(f"{node.op_type} node {node.name!r} has direction {direction!r}")
    if int(node.attr("input_forget", 0)):
        raise EbrError(f"LSTM node {node.name!r} couples the input and forget gates (input_forget=1); unsupported")
    reverse = [False, True] if direction == "bidirectional" else [direction == "reverse"]
    layout = int(node.attr("layout", 0))
    x = ctx.value(node.inputs[0])
    x = xp.swapaxes(x, 0, 1) if layout else x
    steps, batch = x.shape[:2]
    w, r = ctx.value(node.inputs[1]), ctx.value(node.inputs[2])
    gates, hidden = cell_type.gates, r.shape[-1]
    b = ctx.value(_input(node, 3)) if _input(node, 3) else xp.zeros((len(reverse), 2 * gates * hidden), x.dtype)
    peep = ctx.value(_input(node, 7)) if node.op_type == "LSTM" and _input(node, 7) else None
    clip = node.attr("clip")
    acts = _activations(node, defaults, len(reverse))
    cells = [
        cell_type(xp, w[d], b[d, :gates * hidden], r[d], b[d, gates * hidden:],
                  None if peep is None else peep[d].reshape(3, hidden), acts[d],
                  None if clip is None else float(clip), int(node.attr("linear_before_reset", 0)))
        for d in range(len(reverse))
    ]
    lens = ctx.value(_input(node, 4)) if _input(node, 4) else None
    t = xp.arange(steps)[:, None, None]
    mask = xp.ones((steps, batch, 1), bool) if lens is None else t < xp.asarray(lens).reshape(1, -1, 1)

    def state(index: int):
        if not _input(node, index):
            return xp.zeros((len(reverse), batch, hidden), x.dtype)
        s = ctx.value(node.inputs[index])
        return xp.swapaxes(s, 0, 1) if layout else s

    return _Recurrence(x, mask, cells, state(5), state(6) if cell_type.has_c else None, reverse, layout)


def _check_rule_set(node: Node, ctx: RuleContext, rec: _Recurrence) -> str:
    if ctx.mode == "grad":
        return "grad"
    rules = ctx.options.recurrent_rules
    names = {cell.acts[k].name for cell in rec.cells for k in _VALUE_ACTIVATIONS[node.op_type]}
    if names != {"relu"}:
        what = "the gradient of these activations is used inside the unit" if rules == "caffe" else \
            "they pass the signal through unchanged"
        ctx.warn_once("recurrent-relu", f"{node.op_type} node {node.name!r} uses {sorted(names)} activations, not the "
                      f"ReLU the paper's EB-R assumes (A1); {what}")
    return rules


# -- forward and backward through time ----------------------------------------------------------------------------
def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _step(cell: _Cell, xw_t, h, c, mask_t):
    """One time step of one direction; rows past their ``sequence_lens`` keep their state (and output 0)."""
    h_new, c_new, cache = cell.step(xw_t, h, c)
    xp = cell.xp
    return xp.where(mask_t, h_new, h), (None if c is None else xp.where(mask_t, c_new, c)), cache


def _forward(rec: _Recurrence, d: int) -> list:
    """The caches of every step of direction ``d``, indexed by time."""
    cell = rec.cells[d]
    xw = rec.x @ cell.w.T + cell.wb
    h, c = rec.h0[d], None if rec.c0 is None else rec.c0[d]
    caches: list = [None] * rec.x.shape[0]
    for t in _order(rec.x.shape[0], rec.reverse[d]):
        h, c, caches[t] = _step(cell, xw[t], h, c, rec.mask[t])
    return caches


def _backward(rec: _Recurrence, d: int, rules: str, caches: list, dy, dh, dc, zx):
    """The forward in reverse: per step the cell's ``back``; returns the pre-activation signals (T, N, G) and the
    signals at the initial states."""
    cell, xp = rec.cells[d], rec.cells[d].xp
    steps = rec.x.shape[0]
    da_all = xp.zeros(rec.x.shape[:2] + (cell.gates * cell.r.shape[-1],), rec.x.dtype)
    for t in reversed(_order(steps, rec.reverse[d])):
        m = rec.mask[t]
        dh_t = dh if dy is None else dh + xp.where(m, dy[t], 0)
        dc_t = None if dc is None else xp.where(m, dc, 0)
        da, dh_prev, dc_prev = cell.back(rules, caches[t], xp.where(m, dh_t, 0), dc_t,
                                         None if zx is None else zx[t])
        da_all[t] = xp.where(m, xp.concatenate(da, axis=-1), 0)
        dh = xp.where(m, dh_prev, dh_t)
        dc = None if dc is None else xp.where(m, dc_prev, dc)
    return da_all, dh, dc


def _signals(node: Node, rec: _Recurrence, signals: Sequence[Any], xp):
    """The output signals in time-major form: Y as (T, D, N, H), Y_h and Y_c as (D, N, H) (None where absent)."""
    out = list(signals) + [None] * (3 - len(signals))
    dy, dyh, dyc = out[:3]
    if rec.layout:
        dy = None if dy is None else xp.transpose(dy, (1, 2, 0, 3))
        dyh = None if dyh is None else xp.swapaxes(dyh, 0, 1)
        dyc = None if dyc is None else xp.swapaxes(dyc, 0, 1)
    return dy, dyh, dyc


@rule(["LSTM", "GRU", "RNN"], needs=needs_inputs)
def recurrent(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """EB-R / BP-R through a fused recurrent op: the rule set of the module docstring, per direction."""
    xp = ctx.xp
    rec = _read(node, ctx)
    rules = _check_rule_set(node, ctx, rec)
    dy, dyh, dyc = _signals(node, rec, signals, xp)
    dx = xp.zeros_like(rec.x)
    dh0, dc0 = xp.zeros_like(rec.h0), None if rec.c0 is None else xp.zeros_like(rec.c0)
    if rules == "excitation" and (ctx.has_negative(rec.x) or ctx.has_negative(rec.h0)):
        ctx.warn_once("recurrent-negative", f"{node.op_type} node {node.name!r} receives negative inputs; the "
                      "excitation rules assume non-negative children (A1)")
    for d, cell in enumerate(rec.cells):
        zx = rec.x @ xp.maximum(cell.w, 0).T if rules == "excitation" else None
        zx = None if zx is None else zx.reshape(zx.shape[:2] + (cell.gates, -1))
        caches = _forward(rec, d)
        da, dh0[d], dc = _backward(
            rec, d, rules, caches, None if dy is None else dy[:, d],
            xp.zeros_like(rec.h0[d]) if dyh is None else dyh[d],
            None if rec.c0 is None else (xp.zeros_like(rec.c0[d]) if dyc is None else dyc[d]), zx)
        if dc0 is not None:
            dc0[d] = dc
        dx += _project(ctx, node, rules, rec.x, da, cell.w)
    result = [xp.swapaxes(dx, 0, 1) if rec.layout else dx, None, None, None, None,
              xp.swapaxes(dh0, 0, 1) if rec.layout else dh0,
              None if dc0 is None else (xp.swapaxes(dc0, 0, 1) if rec.layout else dc0), None]
    return result[:len(node.inputs)]


def _project(ctx: RuleContext, node: Node, rules: str, x, da, w):
    """The input projection ``xw_t = W x_t``: the gradient, Eq. 8 over x_t alone (caffe), or the already normalised
    ``x_t ⊙ W⁺ᵀq`` (excitation)."""
    xp = ctx.xp
    if rules == "grad":
        return da @ w
    if rules == "excitation":
        return x * (da @ xp.maximum(w, 0))
    return excitation(ctx, node, x, da, w, lambda v, k: v @ k.T, lambda q, k: q @ k)
