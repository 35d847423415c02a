"""The runtime's gRPC server: settings, the thin servicers, the ToolExecutor
client and the process entry point."""
