"""`pilothouse`: chat with an agent and inspect a Pilothouse runtime.

    pilothouse chat --agent assistant "What is 17 * 23?"
    pilothouse chat --agent assistant --json "What time is it?"
    pilothouse agents list
    pilothouse sessions list --agent assistant
    pilothouse sessions messages SESSION_ID
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys

from google.protobuf import json_format

from pilothouse.client.client import PilothouseClient, PilothouseRpcError
from pilothouse.client.render import EventPrinter, event_json
from pilothouse.v1 import event_pb2


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilothouse", description="Pilothouse command-line client")
    parser.add_argument(
        "--server",
        default=os.environ.get("PILOTHOUSE_SERVER", "127.0.0.1:50051"),
        help="runtime address host:port (PILOTHOUSE_SERVER)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="send a message and stream the run")
    chat.add_argument("message")
    chat.add_argument("--agent", default="assistant")
    chat.add_argument("--session", help="session id (else the open session of agent + user)")
    chat.add_argument("--user", default=_default_user(), help="created_by and sender")
    chat.add_argument("--new", action="store_true", help="open a new session")
    chat.add_argument("--json", action="store_true", help="print each event as one JSON line")

    agents = commands.add_parser("agents", help="list or show agents")
    agents_cmd = agents.add_subparsers(dest="agents_command", required=True)
    agents_cmd.add_parser("list")
    show = agents_cmd.add_parser("get")
    show.add_argument("name")

    sessions = commands.add_parser("sessions", help="list sessions or read one's history")
    sessions_cmd = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sessions_cmd.add_parser("list")
    listing.add_argument("--agent", default="")
    listing.add_argument("--user", default="")
    messages = sessions_cmd.add_parser("messages")
    messages.add_argument("session_id")
    return parser


def _print_json(message) -> None:
    print(json.dumps(json_format.MessageToDict(message), ensure_ascii=False))


async def _chat(client: PilothouseClient, args: argparse.Namespace) -> int:
    if args.session:
        session_id = args.session
    elif args.new:
        session_id = (await client.create_session(args.agent, args.user)).id
    else:
        session_id = (await client.get_or_create_session(args.agent, args.user)).id
    printer = EventPrinter()
    stop_reason = event_pb2.STOP_REASON_UNSPECIFIED
    async for event in client.stream_to(session_id, args.message, args.user):
        if args.json:
            print(event_json(event), flush=True)
        else:
            printer.print(event)
        if event.WhichOneof("event") == "done":
            stop_reason = event.done.stop_reason
    if not args.json:
        print(f"session: {session_id}")
    return 1 if stop_reason in (event_pb2.STOP_REASON_ERROR, event_pb2.STOP_REASON_UNSPECIFIED) else 0


async def _run(args: argparse.Namespace) -> int:
    async with PilothouseClient(args.server) as client:
        if args.command == "chat":
            return await _chat(client, args)
        if args.command == "agents":
            if args.agents_command == "list":
                for agent in await client.list_agents():
                    tools = ", ".join(agent.config.tools) or "no tools"
                    print(f"{agent.config.name}\t{agent.config.model}\t{tools}")
            else:
                _print_json(await client.get_agent(args.name))
            return 0
        if args.sessions_command == "list":
            for session in await client.list_sessions(args.agent, args.user):
                print(
                    f"{session.id}\t{session.agent}\t{session.created_by}\t"
                    f"{session.message_count} messages\t{session.title}"
                )
        else:
            for message in await client.list_messages(args.session_id):
                _print_json(message)
        return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = asyncio.run(_run(args))
    except PilothouseRpcError as exc:
        print(f"pilothouse: {exc.code.name}: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
