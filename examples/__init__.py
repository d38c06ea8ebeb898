"""Example tools and a demo agent for guard. Run them from the repository root with ``python -m``."""
