"""Repair: what pulls a verified cut back towards the original: training-free steps and distillation.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.calibrate`: the data side of shrink (statistics before ranking, repair after the cut)
* :mod:`.steps`: training-free repair (bias compensation, BatchNorm recalibration)
* :mod:`.fidelity`: how close a changed model stays to the original on calibration data
* :mod:`.distill`: distillation on unlabelled calibration data
"""
