"""Latency lookup tables: how much each group's width costs in time on this machine and backend, measured
(:mod:`.table`: build, cache, measure plans) on cheap ONNX variants of one export (:mod:`.onnx_graph`) with the
clock that suits the backend (:mod:`.runners`). :mod:`slimnet.allocate.latency` turns a table into widths."""

from .onnx_graph import Template, export_template
from .table import Built, cache_dir, machine, measure, single_cut, table_for

__all__ = ["Built", "Template", "cache_dir", "export_template", "machine", "measure", "single_cut", "table_for"]
