"""Ranking: one score per unit of each group, from tensors or calibration statistics; never a module.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.criteria`: weight criteria (l1, l2, fpgm, random, bn-scale)
* :mod:`.data_criteria`: data-driven criteria (taylor, activation, apoz, wanda)
* :mod:`.statistics`: the calibration statistics the data criteria read
* :mod:`.importance`: scores for the cuts of a training loop
* :mod:`.ranking`: scores made comparable across groups (Ranking; importance kept)
"""
