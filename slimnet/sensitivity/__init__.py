"""Sensitivity: each group cut alone at each ratio, and how far the model moves.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.analysis`: the measurement (``slimnet sensitivity``)
* :mod:`.report`: reading it (table, plot)
"""
