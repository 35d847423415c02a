"""Hook plugins shipped with Pilothouse, registered as entry points of the
group `pilothouse.hooks` (enable them with `PILOTHOUSE_HOOKS`):

- `memory` (`pilothouse.plugins.memory`): facts the user asks to remember
  with "/remember ...", kept in the session store and recalled before
  every run.
- `argument_policy` (`pilothouse.plugins.argument_policy`): deny, ask or
  allow tool calls by tool name and by values at JSON paths of their
  arguments.
"""
