"""Measuring in practice: latency on each backend, ``slimnet bench``, and latency tables.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.latency`: milliseconds per call, timed interleaved
* :mod:`.bench`: parameters, MACs and latency of several models, and the speedups
* :mod:`.lut`: per-layer latency tables for latency targets
"""
