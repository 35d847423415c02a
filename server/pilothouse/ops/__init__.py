"""Process operations shared by the runtime server and the reference
ToolExecutor: tracing (`telemetry`), structured logs (`logs`) and the
metrics pipeline (`metrics`)."""
