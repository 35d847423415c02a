"""The runtime's gRPC handlers: thin, typed translations between
`pilothouse.v1` messages and the runtime (`convert` holds the mapping)."""
