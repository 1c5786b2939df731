"""``slimnet.hf``, kept importable forever: folders that slimnet saved name it in their remote code
(``from slimnet.hf import apply_config_plan, register_weight_renames``). The code lives in :mod:`slimnet.load.hf`."""

from .load.hf import *  # noqa: F403
from .load.hf import (
    PLAN_KEY,
    apply_config_plan,
    default_input,
    from_pretrained,
    register_weight_renames,
    save_pretrained,
)

__all__ = [
    "PLAN_KEY",
    "apply_config_plan",
    "default_input",
    "from_pretrained",
    "register_weight_renames",
    "save_pretrained",
]
