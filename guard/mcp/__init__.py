"""MCP streamable HTTP: JSON-RPC parsing, header/body agreement, tools/list filtering."""
