"""slimnet: physically smaller, verified-exact structured pruning for PyTorch models."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``slimnet.Pruner`` without importing torch on ``import slimnet`` (the command line starts without it)."""
    if name == "Pruner":
        from .pruner import Pruner  # lazy: `import slimnet` stays free of torch for the CLI's start-up

        return Pruner
    raise AttributeError(f"module 'slimnet' has no attribute {name!r}")
