"""The web console in a real headless Chromium (Debian's `chromium`,
driven by Playwright with that executable: no browser is downloaded),
against a real runtime serving its web port: open the console, start a
conversation, watch thinking, text and tool calls stream, approve one,
steer a run, cancel one, find the session again by search and read its
transcript. Every step saves a screenshot into tests/artifacts/web-console
(printed at the end); `.ci/install-chromium` installs the browser, and
without it the test is skipped outside CI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient
from pilothouse.testmodel import Pause, SSEReply, text_reply, tool_calls_reply
from tests.conftest import CANCELLED_GATES, app_settings, gate

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Flags that work in containers and never reach out to the network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts" / "web-console"
TRACE_URL = "http://traces.example/trace/{trace_id}"

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None  # type: ignore[assignment]


def _browser_or_skip() -> None:
    missing = None
    if async_playwright is None:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    elif not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing: run .ci/install-chromium (apt-get install chromium)"
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


def text_then_tools(text: str, calls: list[tuple[str, str, dict]]) -> SSEReply:
    return tool_calls_reply(
        [(call_id, name, json.dumps(args)) for call_id, name, args in calls],
        text=text, reasoning="The user wants numbers and a clean table.",
    )


async def shot(page: Page, name: str, taken: list[Path]) -> None:
    path = ARTIFACTS / f"{len(taken) + 1:02d}-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    taken.append(path)


async def test_the_console_in_chromium(fake_model, model_server, tool_server, tmp_path):
    _browser_or_skip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    app = await start_app(app_settings(
        model_server, tool_server, web_listen_address="127.0.0.1:0", web_trace_url=TRACE_URL,
        heartbeat_interval=60.0,
    ))
    taken: list[Path] = []
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent(
                "ops", tools=("calculate", "delete_records", "wait_for_gate"),
                system_prompt="Be brief.", description="Keeps the records tidy",
            )
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 860},
            )
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await run_the_console(page, f"http://127.0.0.1:{app.web_port}/", fake_model, taken)
                assert errors == []
            finally:
                await context.close()
    finally:
        await app.stop(0)
        print(f"\nweb console screenshots: {ARTIFACTS}")
        for path in taken:
            print(f"  {path.name}")


async def run_the_console(page: Page, url: str, fake_model, taken: list[Path]) -> None:
    # 1. Open the console: the agents are listed.
    await page.goto(url)
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    agent = page.locator('[data-testid="agent"][data-name="ops"]')
    await expect(agent).to_contain_text("Keeps the records tidy")
    await agent.click()
    await shot(page, "console", taken)

    # 2. Start a conversation: thinking, text and two tool calls stream;
    #    calculate runs, delete_records waits for an approval.
    release = asyncio.Event()
    first = text_then_tools("Let me check.", [
        ("call_calc", "calculate", {"expression": "17 * 23 + 4"}),
        ("call_del", "delete_records", {"table": "sessions_2019"}),
    ])
    fake_model.responder.push(
        SSEReply([*first.events[:3], Pause(release), *first.events[3:]]),
        text_reply("17 * 23 + 4 = 395, and the 2019 table is empty now.", chunk_size=6),
    )
    await page.get_by_test_id("new-session").click()
    await expect(page.get_by_test_id("session-title")).to_contain_text("ops")
    await page.get_by_test_id("message").fill("What is 17 * 23 + 4? Then clear the 2019 table.")
    await page.get_by_test_id("send").click()
    run = page.get_by_test_id("run").last
    await expect(run.get_by_test_id("thinking")).to_contain_text("The user wants")
    release.set()  # the rest of the round streams
    calc = run.locator('[data-call-id="call_calc"]')
    delete = run.locator('[data-call-id="call_del"]')
    await expect(calc).to_have_attribute("data-status", "done")
    await expect(calc.get_by_test_id("tool-result")).to_have_text("395")
    await expect(delete).to_have_attribute("data-status", "awaiting-approval")
    await expect(delete.get_by_test_id("tool-args")).to_contain_text('"table": "sessions_2019"')
    trace = run.get_by_test_id("trace-link")
    trace_id = await run.get_attribute("data-trace-id")
    assert trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    await expect(trace).to_have_attribute("href", TRACE_URL.replace("{trace_id}", trace_id))
    await shot(page, "tool-calls-and-an-approval", taken)

    # 3. Approve it: the tool runs, the model answers.
    await delete.get_by_test_id("approve").click()
    await expect(delete).to_have_attribute("data-status", "done")
    await expect(delete.get_by_test_id("tool-result")).to_have_text(
        "deleted all records of sessions_2019"
    )
    await expect(run).to_have_attribute("data-state", "done")
    await expect(run).to_have_attribute("data-stop-reason", "text_response")
    await expect(run.get_by_test_id("assistant-message").last).to_have_text(
        "17 * 23 + 4 = 395, and the 2019 table is empty now."
    )
    await shot(page, "approved-and-answered", taken)

    # 4. Steer a running run: the steering reaches the next round.
    fake_model.responder.push(
        tool_calls_reply([("call_wait", "wait_for_gate", json.dumps({"name": "web-steer"}))]),
        text_reply("Done, and in French as you asked: c'est fait."),
    )
    await page.get_by_test_id("message").fill("Wait for the steer gate.")
    await page.get_by_test_id("send").click()
    run = page.get_by_test_id("run").last
    await expect(run.locator('[data-call-id="call_wait"]')).to_have_attribute("data-status", "running")
    await page.get_by_test_id("message").fill("Answer in French.")
    await page.get_by_test_id("steer").click()
    await expect(page.get_by_test_id("status")).to_have_text("steering sent")
    gate("web-steer").set()
    await expect(run.get_by_test_id("steer-message")).to_contain_text("Answer in French.")
    await expect(run).to_have_attribute("data-stop-reason", "text_response")
    steered = fake_model.requests[-1]["messages"]
    assert any(m["role"] == "user" and m["content"] == "Answer in French." for m in steered)
    await shot(page, "steered", taken)

    # 5. Cancel a run while its tool call runs: the call is cancelled at the
    #    ToolExecutor and the run ends CANCELLED.
    fake_model.responder.push(
        tool_calls_reply([("call_slow", "wait_for_gate", json.dumps({"name": "web-cancel"}))]),
    )
    await page.get_by_test_id("message").fill("Now wait for a gate that never opens.")
    await page.get_by_test_id("send").click()
    run = page.get_by_test_id("run").last
    slow = run.locator('[data-call-id="call_slow"]')
    await expect(slow).to_have_attribute("data-status", "running")
    await page.get_by_test_id("cancel").click()
    await expect(run).to_have_attribute("data-stop-reason", "cancelled")
    await expect(slow).to_have_attribute("data-status", "cancelled")
    assert "web-cancel" in CANCELLED_GATES
    await expect(page.get_by_test_id("send")).to_be_enabled()
    await shot(page, "cancelled", taken)

    # 6. A fresh page finds the session by search and shows its transcript.
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    await page.get_by_test_id("search").fill("nothing said this")
    await expect(page.get_by_test_id("session")).to_have_count(0)
    await page.get_by_test_id("search").fill("french")
    await expect(page.get_by_test_id("session")).to_have_count(1)
    await expect(page.get_by_test_id("snippet")).to_contain_text("French")
    await page.get_by_test_id("session").click()
    history = page.get_by_test_id("history")
    await expect(history.get_by_test_id("user-message").first).to_contain_text("What is 17 * 23 + 4?")
    await expect(history.locator('[data-call-id="call_del"]')).to_have_attribute("data-status", "done")
    await expect(history.locator('[data-call-id="call_slow"]')).to_have_attribute(
        "data-status", "cancelled"
    )
    await shot(page, "history", taken)
