"""guard: a zero-trust reverse proxy between AI agents and the tools they call."""

__version__ = "0.1.0"
__all__ = ["__version__"]
