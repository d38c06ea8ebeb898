"""The `guard` command line: one module per command group."""
