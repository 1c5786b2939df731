"""slimnet: physically smaller, verified-exact structured pruning for PyTorch models."""

__version__ = "0.1.0"
