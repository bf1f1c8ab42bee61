"""Running a lowered walk: which bottom part of a walk is lowered (:meth:`Lowering.split`), and one onnxruntime run
of its graph on slices of the examples (:meth:`Lowering.run`)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..core.backend import run_options
from ..core.context import RuleContext
from ..core.errors import LoweringFailed
from ..core.graph import Node
from ..core.propagate import propagate
from . import ops  # noqa: F401  (registers the lowerings)
from .builder import LOWERINGS, GraphBuilder, Lowered

#: The largest slice of one fed tensor per run of a lowered graph (see :func:`_run_in_slices`).
SLICE_BYTES = 16 << 20


def _lowerable(node: Node, ctx: RuleContext) -> bool:
    found = LOWERINGS.get((node.op_type, ctx.mode))
    return found is not None and node.name not in ctx.negated and found[1](node, ctx)


class Lowering:
    """The :class:`~ebr_onnx.core.context.Lowerer` of CPU walks in float32."""

    def __init__(self) -> None:
        #: The walks (their nodes' names) whose bias-guarded graph gave a signal that is not finite: they run with
        #: the exact guard from then on (one graph built per call, not two, for a caller whose signals overflow it).
        self._exact: set[tuple[str, ...]] = set()

    def split(self, ctx: RuleContext, nodes: list[Node]) -> tuple[list[Node], list[Node]]:
        """(the bottom run of ``nodes`` to lower, the rest), in topological order. Nothing is lowered off the CPU, in
        other dtypes, or under rule overrides (the recurrent rule sets)."""
        if (ctx.kernels is None or ctx.xp is not np or np.dtype(ctx.dtype) != np.float32 or ctx.overrides
                or not ctx.options.lowering):
            return [], nodes
        count = 0
        while count < len(nodes) and _lowerable(nodes[count], ctx):
            count += 1
        return nodes[:count], nodes[count:]

    def run(self, ctx: RuleContext, nodes: list[Node], seeds: Mapping[str, Any], keep: set[str],
            reach: set[str] | None) -> dict[str, np.ndarray]:
        """The walk of ``nodes`` from ``seeds`` (see :func:`ebr_onnx.core.walk.walk`) as one onnxruntime run; the
        signals at the ``keep`` tensors (seeds included) that received any. A signal that is not finite (the
        convolutions' guard overflowed: see :data:`ebr_onnx.lowering.ops.GUARD`) makes the walk run again with the
        exact guard, for this call and every later one."""
        walk = tuple(n.name for n in nodes)
        if walk not in self._exact:
            signals = self._run(GraphBuilder(ctx), nodes, seeds, keep, reach)
            if all(np.isfinite(v).all() for v in signals.values()):
                return signals
            self._exact.add(walk)
        return self._run(GraphBuilder(ctx, exact=True), nodes, seeds, keep, reach)

    def _run(self, b: GraphBuilder, nodes: list[Node], seeds: Mapping[str, Any], keep: set[str],
             reach: set[str] | None) -> dict[str, np.ndarray]:
        ctx = b.ctx
        signals = propagate(nodes, {name: Lowered(b.seed(name, s)) for name, s in seeds.items()}, keep, reach,
                            ctx.is_signal, lambda node, outs: LOWERINGS[(node.op_type, ctx.mode)][0](node, b, outs),
                            b.add)
        wanted = [k for k in sorted(keep) if k in signals]
        outputs = [b.op("Identity", [signals[k].name]) for k in wanted]
        if not wanted:
            return {}
        try:
            listed = any(n.op_type == "Conv" and len(ctx.shape(n.inputs[0])) == 5 for n in nodes)
            session = ctx.kernels.latest(("lowered", tuple(n.name for n in nodes)), b.key(outputs),
                                         lambda: ctx.kernels.session(*b.model(outputs), whole=True,
                                                                     listed_order=listed))
            values = _run_in_slices(session, outputs, b)
        except Exception as exc:  # onnxruntime's errors have no common base class
            raise LoweringFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        return dict(zip(wanted, values))


def _run_in_slices(session, outputs: list[str], b: GraphBuilder) -> list[np.ndarray]:
    """Run the graph on slices of the examples, each feed's slice at most :data:`SLICE_BYTES` (the graph's working
    set grows with the slice: VGG-16's walk of 8 frames peaks 0.55 GB lower one frame at a time, at the same speed,
    and 16 frames run 15 % faster); the signals are concatenated. One run where the graph is not
    :attr:`GraphBuilder.per_example`. The model's weights the graph reads (:attr:`GraphBuilder.fed`) go with every
    run; the session's arena is shrunk after the last run, so that it holds no buffers between walks."""
    shrink = run_options(["CPUExecutionProvider"])

    def run(feeds: dict[str, np.ndarray], last: bool = True) -> list[np.ndarray]:
        return session.run(outputs, {**b.fed, **feeds}, shrink if last else None)

    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in b.feeds.values()}
    if not b.per_example or len(sizes) != 1 or None in sizes:
        return run(b.feeds)
    (n,) = sizes
    rows = max(1, int(SLICE_BYTES // max(v.nbytes / n for v in b.feeds.values())))
    if rows >= n:
        return run(b.feeds)
    parts = [run({k: v[i:i + rows] for k, v in b.feeds.items()}, i + rows >= n) for i in range(0, n, rows)]
    if any(np.shape(out)[:1] != (min(rows, n - i * rows),) for i, part in enumerate(parts) for out in part):
        return run(b.feeds)  # an output that is not per example: the slices do not apply
    return [np.concatenate([part[k] for part in parts]) for k in range(len(outputs))]
