"""MCP servers' tools served by the reference ToolExecutor.

`config` reads the config file (no `mcp` package needed); `connection`
keeps the connection to one server (`McpServerHost`) and calls its tools;
`hosts` serves every configured server's tools as one tool source
(`McpHosts`) and reports their health; `convert` maps MCP names,
annotations and results to Pilothouse's. All but `config` need the official
`mcp` SDK: `pip install 'pilothouse[mcp]'`.
"""
