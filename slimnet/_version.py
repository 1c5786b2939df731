"""The package version, in a module of its own: modules that record it (plans, device info) import this, not the
package face, so that no module imports upwards (``slimnet/__init__.py`` re-exports it)."""

__version__ = "0.1.0"
