"""gRPC plumbing shared by Pilothouse's servers: error translation and the
server bootstrap (health, reflection, graceful shutdown)."""
