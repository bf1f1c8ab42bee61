"""Unrolled recurrent cells: recognising LSTM and GRU steps written in primitive ops (:mod:`.match`) and the recurrent
rule sets applied to them node by node (:mod:`.rules`), so that an unrolled RNN is explained like the fused op."""
from .match import AnyCell, Cell, GateSum, GruCell, find_cells
from .rules import cell_needs, cell_overrides

__all__ = ["AnyCell", "Cell", "GateSum", "GruCell", "cell_needs", "cell_overrides", "find_cells"]
