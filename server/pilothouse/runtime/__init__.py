"""The agent runtime: agents, sessions, runs and the agent loop.

Nothing in this package knows about gRPC; `pilothouse.handlers` translates
between protobuf and these types.
"""
