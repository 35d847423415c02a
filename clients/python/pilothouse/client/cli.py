"""`pilothouse`: chat with an agent and inspect a Pilothouse runtime.

    pilothouse chat --agent assistant                # an interactive conversation
    pilothouse chat --agent assistant "What is 17 * 23?"
    pilothouse chat --agent assistant --json "What time is it?"
    pilothouse agents list
    pilothouse agents versions assistant             # every version, newest first
    pilothouse agents get assistant --version 1
    pilothouse sessions list --agent assistant
    pilothouse sessions messages SESSION_ID
    pilothouse attach SESSION_ID --after 12      # re-attach to a run
    pilothouse steer SESSION_ID "Also check the weekend"
    pilothouse cancel SESSION_ID
    pilothouse decide SESSION_ID REQUEST_ID approve
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import AsyncIterable
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from pilothouse.client.client import DEFAULT_TIMEOUT, PilothouseClient, SteerStream
from pilothouse.client.connection import add_connection_arguments, connection_options
from pilothouse.client.errors import PilothouseError
from pilothouse.client.explain import explain
from pilothouse.client.render import EventPrinter, event_json
from pilothouse.client.run import decision
from pilothouse.v1 import event_pb2, run_service_pb2

NEEDS_RICH = ("the interactive chat needs rich: pip install 'pilothouse-client[cli]' "
              "(or pass a message, or --json)")


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
    add_connection_arguments(parser)
    parser.add_argument(
        "--rpc-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"deadline of each unary call (default {DEFAULT_TIMEOUT:g})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser(
        "chat", help="send a message and stream the run; without one, an interactive conversation")
    chat.add_argument("message", nargs="?", help="omit for an interactive conversation")
    chat.add_argument("--agent", default="assistant")
    chat.add_argument("--session", help="session id (else the open session of agent + user)")
    chat.add_argument("--user", default=_default_user(), help="created_by and sender")
    chat.add_argument("--new", action="store_true", help="open a new session")
    chat.add_argument("--json", action="store_true", help="print each event as one JSON line")
    chat.add_argument("--if-active", choices=["reject", "enqueue", "interrupt", "steer"],
                      default="reject", help="what to do when the session is busy")
    chat.add_argument("--on-disconnect", choices=["continue", "cancel"], default="continue")
    chat.add_argument("--timeout", type=float, default=0.0, help="run time limit, seconds")
    chat.add_argument("--no-prompt", action="store_true",
                      help="never ask on the terminal for approvals and questions")

    attach = commands.add_parser("attach", help="follow a run (missed events first)")
    attach.add_argument("session_id")
    attach.add_argument("--run", default="", help="run id (else the session's active run)")
    attach.add_argument("--after", type=int, default=0, help="send events after this sequence")
    attach.add_argument("--json", action="store_true")

    steer = commands.add_parser("steer", help="steer the session's active run")
    steer.add_argument("session_id")
    steer.add_argument("message")
    steer.add_argument("--user", default=_default_user())

    cancel = commands.add_parser("cancel", help="cancel a run and wait until it stopped")
    cancel.add_argument("session_id")
    cancel.add_argument("--run", default="")
    cancel.add_argument("--reason", default="")

    decide = commands.add_parser("decide", help="answer an approval request")
    decide.add_argument("session_id")
    decide.add_argument("request_id")
    decide.add_argument("verdict", choices=["approve", "deny", "always"])
    decide.add_argument("--reason", default="")

    answer = commands.add_parser("answer", help="answer a question")
    answer.add_argument("session_id")
    answer.add_argument("request_id")
    answer.add_argument("--option", action="append", default=[], help="a chosen option (repeatable)")
    answer.add_argument("--text", default="")

    agents = commands.add_parser("agents", help="list or show agents")
    agents_cmd = agents.add_subparsers(dest="agents_command", required=True)
    agents_cmd.add_parser("list")
    show = agents_cmd.add_parser("get")
    show.add_argument("name")
    show.add_argument("--version", type=int, default=0, help="a version (default: the latest)")
    versions = agents_cmd.add_parser("versions", help="an agent's versions, newest first")
    versions.add_argument("name")

    sessions = commands.add_parser("sessions", help="list sessions or read one's history")
    sessions_cmd = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sessions_cmd.add_parser("list")
    listing.add_argument("--agent", default="")
    listing.add_argument("--user", default="")
    messages = sessions_cmd.add_parser("messages")
    messages.add_argument("session_id")
    for name, help_text in (
        ("close", "close a session"),
        ("delete", "delete a session"),
        ("compact", "summarise a session's history"),
        ("export", "print a session as JSON Lines"),
    ):
        sessions_cmd.add_parser(name, help=help_text).add_argument("session_id")
    importing = sessions_cmd.add_parser("import", help="import a JSON Lines export")
    importing.add_argument("file")
    return parser


_VERDICTS = {
    "approve": event_pb2.VERDICT_APPROVE,
    "deny": event_pb2.VERDICT_DENY,
    "always": event_pb2.VERDICT_APPROVE_ALWAYS,
    "y": event_pb2.VERDICT_APPROVE,
    "n": event_pb2.VERDICT_DENY,
    "a": event_pb2.VERDICT_APPROVE_ALWAYS,
}


def _options(args: argparse.Namespace) -> run_service_pb2.RunOptions:
    options = run_service_pb2.RunOptions(
        if_active=run_service_pb2.ActiveRunPolicy.Value(f"ACTIVE_RUN_POLICY_{args.if_active.upper()}"),
        on_disconnect=run_service_pb2.DisconnectPolicy.Value(
            f"DISCONNECT_POLICY_{args.on_disconnect.upper()}"
        ),
        # Rendered text reads the same merged; --json prints every event.
        merge_deltas=not args.json,
    )
    if args.timeout > 0:
        options.timeout.FromNanoseconds(int(args.timeout * 1e9))
    return options


async def _prompt_decision(event: event_pb2.AgentEvent) -> event_pb2.Decision | None:
    """Ask on the terminal; None when the user gives no usable answer."""
    if event.HasField("approval_required"):
        approval = event.approval_required
        reply = await asyncio.to_thread(input, "approve? [y]es / [n]o / [a]lways: ")
        verdict = _VERDICTS.get(reply.strip().lower()[:1])
        if verdict is None:
            return None
        return decision(approval.request_id, verdict)
    question = event.question_asked
    reply = (await asyncio.to_thread(input, "answer: ")).strip()
    if question.options:
        chosen = [o.strip() for o in reply.split(",") if o.strip() in question.options]
        return decision(question.request_id, selected_options=chosen) if chosen else decision(
            question.request_id, text=reply
        )
    return decision(question.request_id, text=reply)


def _print_json(message: Message) -> None:
    print(json.dumps(json_format.MessageToDict(message), ensure_ascii=False))


async def _session(client: PilothouseClient, args: argparse.Namespace) -> str:
    if args.session:
        return str(args.session)
    if args.new:
        return (await client.create_session(args.agent, args.user)).id
    return (await client.get_or_create_session(args.agent, args.user)).id


def _rich_terminal(args: argparse.Namespace) -> bool:
    """Whether to render with rich: on a terminal, and rich is installed."""
    if args.json or args.no_prompt or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _interactive(runner: asyncio.Runner, args: argparse.Namespace) -> int:
    """`chat` on a terminal: the conversation loop, or one rich-rendered run."""
    from pilothouse.client.interactive import InteractiveChat

    client = runner.run(_connect(args))
    try:
        session_id = runner.run(_session(client, args))
        chat = InteractiveChat(client, session_id, args.user, _options(args))
        if args.message is None:
            return chat.run(runner)
        done = runner.run(chat.send(args.message))
        chat.console.print(f"[dim]session: {session_id}[/]")
        failed = (event_pb2.STOP_REASON_ERROR, event_pb2.STOP_REASON_UNSPECIFIED)
        return 1 if done is None or done.stop_reason in failed else 0
    finally:
        runner.run(client.close())


async def _chat(client: PilothouseClient, args: argparse.Namespace) -> int:
    session_id = await _session(client, args)
    interactive = not args.json and not args.no_prompt and sys.stdin.isatty()
    stream = await client.steer(session_id, args.message, args.user, options=_options(args))
    code = await _follow(stream, args.json, stream if interactive else None, session_id)
    if not args.json:
        print(f"session: {session_id}")
    return code


async def _follow(
    events: AsyncIterable[event_pb2.AgentEvent],
    as_json: bool,
    answer_on: SteerStream | None = None,
    session_id: str = "",
) -> int:
    """Print a run's events; with `answer_on` (a SteerStream), ask on the
    terminal for approvals and questions. Returns the exit code: 1 when the
    run ended in error (or without `done`), else 0."""
    printer = EventPrinter()
    stop_reason = event_pb2.STOP_REASON_UNSPECIFIED
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "heartbeat":
            continue
        if as_json:
            print(event_json(event), flush=True)
        else:
            printer.print(event)
        if kind in ("approval_required", "question_asked"):
            if answer_on is not None:
                answer = await _prompt_decision(event)
                if answer is not None:
                    await answer_on.decide(answer)
            elif not as_json:
                request = (event.approval_required.request_id if kind == "approval_required"
                           else event.question_asked.request_id)
                command = "decide" if kind == "approval_required" else "answer"
                print(f"  (answer with: pilothouse {command} {session_id} {request} ...)", flush=True)
        if kind == "done":
            stop_reason = event.done.stop_reason
    failed = (event_pb2.STOP_REASON_ERROR, event_pb2.STOP_REASON_UNSPECIFIED)
    return 1 if stop_reason in failed else 0


async def _connect(args: argparse.Namespace) -> PilothouseClient:
    """The client every command uses (created in the running event loop)."""
    return PilothouseClient(args.server, timeout=args.rpc_timeout, **connection_options(args))


async def _run(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        if args.command == "chat":
            return await _chat(client, args)
        if args.command == "attach":
            return await _follow(
                client.attach(args.session_id, args.run, args.after, merge_deltas=not args.json),
                args.json,
                session_id=args.session_id,
            )
        if args.command == "steer":
            run_id = await client.steer_session(args.session_id, args.message, args.user)
            print(f"steered run {run_id}")
            return 0
        if args.command == "cancel":
            reply = await client.cancel(args.session_id, args.run, args.reason)
            reason = event_pb2.StopReason.Name(reply.stop_reason).removeprefix("STOP_REASON_").lower()
            state = "had already finished" if reply.already_finished else "cancelled"
            print(f"run {reply.run_id} {state} ({reason})")
            return 0
        if args.command == "decide":
            run_id = await client.submit_decision(
                args.session_id, decision(args.request_id, _VERDICTS[args.verdict], reason=args.reason)
            )
            print(f"decision sent to run {run_id}")
            return 0
        if args.command == "answer":
            run_id = await client.submit_decision(
                args.session_id,
                decision(args.request_id, selected_options=args.option, text=args.text),
            )
            print(f"answer sent to run {run_id}")
            return 0
        if args.command == "agents":
            if args.agents_command == "list":
                for agent in await client.list_agents():
                    tools = ", ".join(agent.config.tools) or "no tools"
                    print(f"{agent.config.name}\t{agent.config.model}\t{tools}")
            elif args.agents_command == "versions":
                for agent in await client.list_agent_versions(args.name):
                    made = agent.update_time.ToDatetime().isoformat(timespec="seconds")
                    print(f"v{agent.version}\t{made}Z\t{agent.source}\t"
                          f"{agent.config.model or 'default model'}")
            else:
                _print_json(await client.get_agent(args.name, args.version))
            return 0
        if args.sessions_command == "close":
            _print_json(await client.close_session(args.session_id))
            return 0
        if args.sessions_command == "delete":
            await client.delete_session(args.session_id)
            print(f"deleted {args.session_id}")
            return 0
        if args.sessions_command == "compact":
            print((await client.compact_session(args.session_id)).summary)
            return 0
        if args.sessions_command == "export":
            sys.stdout.write((await client.export_session(args.session_id)).decode())
            return 0
        if args.sessions_command == "import":
            content = await asyncio.to_thread(Path(args.file).read_bytes)
            session = await client.import_session(content)
            print(session.id)
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
    chatting = args.command == "chat"
    if chatting and args.message is None and not _rich_terminal(args):
        if args.json or args.no_prompt:
            problem = "give a message: --json and --no-prompt send one and exit"
        elif sys.stdin.isatty() and sys.stdout.isatty():
            problem = NEEDS_RICH
        else:
            problem = "give a message: an interactive chat needs a terminal"
        print(f"pilothouse: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        with asyncio.Runner() as runner:
            if chatting and _rich_terminal(args):
                code = _interactive(runner, args)
            else:
                code = runner.run(_run(args))
    except PilothouseError as exc:
        print(f"pilothouse: {explain(exc, args.server, args.rpc_timeout)}", file=sys.stderr)
        code = 2
    except ValueError as exc:  # unusable TLS files or flags
        print(f"pilothouse: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
