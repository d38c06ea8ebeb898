"""HTTP handlers, one module per part of the API. Each exposes `routes`."""
