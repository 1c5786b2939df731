"""``slimnet.integrations.hf_trainer``, kept importable: see :mod:`slimnet.train.integrations.hf_trainer`."""

from ..train.integrations.hf_trainer import SlimnetCallback

__all__ = ["SlimnetCallback"]
