"""The runtime server's composition root: settings, start-up and drain
(`startup`), the process entry point (`main`), the agents file, dependency
health and the runtime's metrics."""
