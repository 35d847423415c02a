"""The benchmark's workload, shared by every side: the bench client, the fake
model server and the peer frameworks (which run in another virtualenv, so
this module uses the standard library only).

One *tool-call turn* is: the user asks `USER_MESSAGE`; the model streams one
call of the `calculate` tool with `TOOL_ARGUMENTS`; the tool runs; the model
streams an answer of `ANSWER_TOKENS` text deltas. The fake model server
chooses its reply from the request's `model` and from the role of the last
message (a `tool` message means "answer now").
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a benchmark agent. Use the calculate tool, then answer in one sentence."
USER_MESSAGE = "What is 17 * 23 + 4?"
TOOL_NAME = "calculate"
TOOL_CALL_ID = "call_bench_0001"
TOOL_ARGUMENTS = '{"expression": "17 * 23 + 4"}'
TOOL_RESULT = "395"
ANSWER_TOKENS = 20
#: Text of the relay scenario's deltas: about one token each, as real
#: providers stream them.
RELAY_TOKEN = " tok"

#: gRPC deadline of every run the bench streams, seconds: a stuck run ends
#: the call instead of hanging the bench (the slowest, a 2,000-run burst, takes
#: well under a minute).
RUN_DEADLINE_S = 180.0

# Model names the fake server understands (each agent of the bench names one).
MODEL_TURN = "bench-turn"  # tool call, then the answer, as fast as possible
MODEL_DELAY = "bench-delay"  # the same, with a fixed delay before every chunk
MODEL_RELAY = "bench-relay"  # one text answer of many deltas
MODEL_HOLD = "bench-hold"  # one delta, then hold the stream until released

# Agents of the runtime under test (written to its agents file).
AGENT_TURN = "bench-turn"
AGENT_DELAY = "bench-delay"
AGENT_RELAY = "bench-relay"
AGENT_HOLD = "bench-hold"
AGENTS = {
    AGENT_TURN: (MODEL_TURN, (TOOL_NAME,)),
    AGENT_DELAY: (MODEL_DELAY, (TOOL_NAME,)),
    AGENT_RELAY: (MODEL_RELAY, ()),
    AGENT_HOLD: (MODEL_HOLD, ()),
}


def answer_tokens() -> list[str]:
    """The answer's deltas: `ANSWER_TOKENS` of them, about a token each."""
    words = f"The answer is {TOOL_RESULT}, computed with the calculate tool as asked".split()
    tokens = [(" " if i else "") + words[i % len(words)] for i in range(ANSWER_TOKENS)]
    return tokens


def agents_toml() -> str:
    """The runtime's agents file for the bench agents."""
    blocks = []
    for name, (model, tools) in AGENTS.items():
        tool_list = ", ".join(f'"{t}"' for t in tools)
        blocks.append(
            "[[agents]]\n"
            f'name = "{name}"\n'
            f'model = "{model}"\n'
            f'system_prompt = "{SYSTEM_PROMPT}"\n'
            f"tools = [{tool_list}]\n"
        )
    return "\n".join(blocks)
