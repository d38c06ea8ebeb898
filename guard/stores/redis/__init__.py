"""The Redis store: keys, the connection and its multiplexer, the Lua scripts, the store."""
