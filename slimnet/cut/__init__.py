"""Cutting: the surgeon rewrites a model into a smaller dense one from a plan; it never ranks.

Modules (import them directly; this file imports nothing, so that a room costs nothing until used):

* :mod:`.surgeon`: slice every planned tensor, fix each module's size attributes (SURGERY)
* :mod:`.sizes`: the size attributes a module's forward reads (SIZES)
* (:mod:`slimnet.modules` holds the replacement modules; it stays at the top because saved pickles name it)
"""
