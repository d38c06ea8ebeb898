"""Framework adapters: a task's tools as the tools of an agent framework, every call through guard."""
