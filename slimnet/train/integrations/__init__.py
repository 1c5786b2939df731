"""Callbacks that drop :class:`slimnet.train.pruner.Pruner` into other people's training loops, each a thin shell over
it and each importing its framework only when imported itself (optional extras):

* :mod:`slimnet.train.integrations.lightning`: ``SlimnetPruning``, a PyTorch Lightning ``Callback`` (extra
``lightning``);
* :mod:`slimnet.train.integrations.hf_trainer`: ``SlimnetCallback``, a Hugging Face ``TrainerCallback`` (extra
  ``transformers``).
"""
