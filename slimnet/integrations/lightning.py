"""``slimnet.integrations.lightning``, kept importable: see :mod:`slimnet.train.integrations.lightning`."""

from ..train.integrations.lightning import SlimnetPruning

__all__ = ["SlimnetPruning"]
