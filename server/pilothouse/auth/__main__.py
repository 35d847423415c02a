"""Make entries of a tokens file (PILOTHOUSE_AUTH_TOKENS_FILE).

    python -m pilothouse.auth new-token --principal ci-bot --role user
    printf %s "$TOKEN" | python -m pilothouse.auth hash-token --principal ci-bot

`new-token` prints a new random token on the first line (give it to the
client, e.g. PILOTHOUSE_TOKEN) and the TOML entry to add to the file;
`hash-token` reads a token from standard input and prints its entry.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from pilothouse.auth.tokens import hash_token


def entry(token: str, principal: str, roles: list[str]) -> str:
    return (
        "[[tokens]]\n"
        f"principal = {json.dumps(principal)}\n"
        f"roles = {json.dumps(roles)}\n"
        f'sha256 = "{hash_token(token)}"\n'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pilothouse.auth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("new-token", "make a random token and print it with its entry"),
        ("hash-token", "print the entry of a token read from standard input"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--principal", required=True)
        command.add_argument("--role", action="append", default=[], help="repeatable")
    args = parser.parse_args(argv)
    roles = args.role or ["user"]
    if args.command == "new-token":
        token = secrets.token_urlsafe(32)
        print(token)
        print(entry(token, args.principal, roles), end="")
        return 0
    token = sys.stdin.read().strip()
    if not token:
        print("no token on standard input", file=sys.stderr)
        return 2
    print(entry(token, args.principal, roles), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
