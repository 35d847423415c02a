"""Outbound adapters of the runtime server: the ToolExecutor gRPC client,
forwarding of run calls to other replicas, and the content-recording model
wrapper for traces."""
