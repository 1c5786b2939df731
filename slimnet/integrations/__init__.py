"""``slimnet.integrations``, kept importable: the callbacks live in :mod:`slimnet.train.integrations`
(``slimnet.integrations.lightning`` and ``slimnet.integrations.hf_trainer`` name the same classes)."""
