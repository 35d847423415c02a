"""MCP servers' tools served by the reference ToolExecutor.

`config` reads the config file (no `mcp` package needed); `host` keeps a
connection to every configured server and serves their tools
(`McpHosts`); `convert` maps MCP names, annotations and results to
Pilothouse's. The `host` and `convert` modules need the official `mcp`
SDK: `pip install 'pilothouse[mcp]'`.
"""
