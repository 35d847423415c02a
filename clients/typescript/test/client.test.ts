/**
 * The client against the real runtime and ToolExecutor (scripted test model):
 * a conversation with tool calls, approvals, steering, cancellation and
 * errors with their details decoded.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  answer,
  ApprovalPolicy,
  approve,
  type AgentEvent,
  Code,
  deny,
  PilothouseClient,
  PilothouseError,
  Role,
  StopReason,
  Verdict,
} from "../src/index.js";
import { assertContiguous, kinds, ofKind, unique } from "./support/events.js";
import { type Servers, startServers } from "./support/servers.js";

let servers: Servers;
let client: PilothouseClient;

before(async () => {
  servers = await startServers();
  client = new PilothouseClient({ address: servers.address });
});

after(async () => {
  client?.close();
  await servers?.stop();
});

/** A new session on a new agent whose every tool call waits for approval. */
async function approvalSession(tools = ["calculate"]): Promise<string> {
  const agent = await client.createAgent({
    name: unique("approver"),
    tools,
    approvalPolicy: ApprovalPolicy.ALWAYS,
  });
  assert.equal(agent.config?.approvalPolicy, ApprovalPolicy.ALWAYS);
  return (await client.createSession(agent.config!.name, "ts-tests")).id;
}

/** Read `stream` until an event of `kind`; returns the events read, that one last. */
async function readUntil(stream: AsyncIterator<AgentEvent>, kind: string): Promise<AgentEvent[]> {
  const events: AgentEvent[] = [];
  for (;;) {
    const next = await stream.next();
    assert.ok(!next.done, `the stream ended before ${kind}: ${kinds(events)}`);
    events.push(next.value);
    if (next.value.event.case === kind) {
      return events;
    }
  }
}

/**
 * Read `stream` to its end, approving every tool call that asks on the
 * way (a steered run makes a new round, and the scripted model calls its
 * tools again).
 */
async function approveRest(
  sessionId: string,
  stream: AsyncIterator<AgentEvent>,
): Promise<AgentEvent[]> {
  const events: AgentEvent[] = [];
  for (let next = await stream.next(); !next.done; next = await stream.next()) {
    events.push(next.value);
    if (next.value.event.case === "approvalRequired") {
      await client.submitDecision(sessionId, approve(next.value.event.value.requestId));
    }
  }
  return events;
}

async function drain(stream: AsyncIterator<AgentEvent>): Promise<AgentEvent[]> {
  const events: AgentEvent[] = [];
  for (let next = await stream.next(); !next.done; next = await stream.next()) {
    events.push(next.value);
  }
  return events;
}

describe("conversation", () => {
  test("streamTo runs the tools and answers; the history is stored", async () => {
    const agents = await client.listAgents();
    assert.ok(agents.some((agent) => agent.config?.name === "assistant"));
    const { session } = await client.getOrCreateSession("assistant", unique("user"));

    const stream = client.streamTo(session.id, "What is 17 * 23 + 4, and what time is it?", {
      sender: "ts",
    });
    const events: AgentEvent[] = [];
    for await (const event of stream) {
      events.push(event);
    }

    assertContiguous(events);
    const seen = kinds(events);
    assert.equal(seen[0], "runStarted");
    assert.equal(seen.at(-1), "done");
    assert.equal(ofKind(events, "runStarted")[0]!.sender, "ts");
    const calls = ofKind(events, "toolCallsStart")[0]!.toolCalls;
    assert.deepEqual(calls.map((call) => call.name).sort(), [
      "calculate",
      "current_time",
      "json_query",
      "text_stats",
    ]);
    const results = ofKind(events, "toolResult");
    assert.deepEqual(
      results.map((result) => result.callId).sort(),
      calls.map((call) => call.id).sort(),
    );
    const text = ofKind(events, "textDelta")
      .map((delta) => delta.text)
      .join("");
    assert.match(text, /scripted test model/);
    assert.match(text, /current_time ->/);

    const done = stream.response!;
    assert.equal(await stream.result(), done);
    assert.equal(done.stopReason, StopReason.TEXT_RESPONSE);
    assert.equal(done.iterations, 2);
    assert.equal(done.finalResponse, text);
    assert.equal(stream.runId, events[0]!.runId);
    assert.equal(stream.reattachCount, 0);

    const history = await client.listMessages(session.id);
    assert.deepEqual(
      history.map((message) => message.role),
      [Role.USER, Role.ASSISTANT, ...calls.map(() => Role.TOOL), Role.ASSISTANT],
    );
    assert.equal(history.at(-1)!.content, text);
  });

  test("sendTo waits for the run and returns its outcome", async () => {
    const session = await client.createSession("assistant", unique("user"));
    const reply = await client.sendTo(session.id, "Count the words of this sentence");
    assert.equal(reply.response?.stopReason, StopReason.TEXT_RESPONSE);
    assert.equal(reply.response?.steps.length, 2);
    assert.match(reply.response!.finalResponse, /text_stats ->/);
    const stored = await client.getSession(session.id);
    assert.equal(stored.lastRunId, reply.runId);
    assert.equal(stored.activeRunId, "");
  });
});

describe("merged deltas", () => {
  test("attach with mergeDeltas behind a finished run: each text segment as one delta", async () => {
    const session = await client.createSession("assistant", unique("user"));
    const reply = await client.sendTo(session.id, "Count the words of this sentence");
    const every = await drain(
      client.attach(session.id, { runId: reply.runId })[Symbol.asyncIterator](),
    );
    const merged = await drain(
      client.attach(session.id, { runId: reply.runId, mergeDeltas: true })[Symbol.asyncIterator](),
    );
    const text = (events: AgentEvent[]) =>
      ofKind(events, "textDelta")
        .map((delta) => delta.text)
        .join("");
    assertContiguous(every);
    assert.equal(text(merged), text(every));
    assert.equal(text(merged), reply.response!.finalResponse);
    assert.ok(ofKind(merged, "textDelta").length < ofKind(every, "textDelta").length);
    assert.equal(ofKind(merged, "textDelta").length, ofKind(merged, "textStart").length);
    assert.equal(merged.at(-1)!.sequence, every.at(-1)!.sequence);
  });
});

describe("approvals", () => {
  test("a tool call waits for SubmitDecision, then runs", async () => {
    const sessionId = await approvalSession();
    const stream = client.streamTo(sessionId, "What is 6 * 7?")[Symbol.asyncIterator]();
    const before = await readUntil(stream, "approvalRequired");
    const request = ofKind(before, "approvalRequired")[0]!;
    assert.equal(request.toolCall?.name, "calculate");

    const runId = await client.submitDecision(sessionId, approve(request.requestId));
    assert.equal(runId, before[0]!.runId);
    const rest = await drain(stream);

    assertContiguous([...before, ...rest]);
    const applied = ofKind(rest, "decisionApplied")[0]!;
    assert.equal(applied.requestId, request.requestId);
    assert.equal(applied.decision?.verdict, Verdict.APPROVE);
    assert.equal(ofKind(rest, "toolResult")[0]!.outcome.case, "output");
    assert.equal(ofKind(rest, "done")[0]!.stopReason, StopReason.TEXT_RESPONSE);
  });

  test("a denial reaches the model as the tool's result", async () => {
    const sessionId = await approvalSession();
    const stream = client.streamTo(sessionId, "What is 6 * 7?")[Symbol.asyncIterator]();
    const request = ofKind(await readUntil(stream, "approvalRequired"), "approvalRequired")[0]!;
    await client.submitDecision(sessionId, deny(request.requestId, "not today"));
    const rest = await drain(stream);
    const result = ofKind(rest, "toolResult")[0]!;
    assert.equal(result.outcome.case, "error");
    assert.match(String(result.outcome.value), /not today/);
    assert.equal(ofKind(rest, "done")[0]!.stopReason, StopReason.TEXT_RESPONSE);
  });
});

describe("questions", () => {
  test("the agent's ask_user question is answered with SubmitDecision", async () => {
    const agent = await client.createAgent({ name: unique("asker"), tools: ["ask_user"] });
    const session = await client.createSession(agent.config!.name, "ts-tests");
    const stream = client.streamTo(session.id, "Which colour?")[Symbol.asyncIterator]();
    const asked = ofKind(await readUntil(stream, "questionAsked"), "questionAsked")[0]!;
    assert.equal(asked.multiSelect, false);
    await client.submitDecision(session.id, answer(asked.requestId, { text: "blue" }));
    const rest = await drain(stream);
    const result = ofKind(rest, "toolResult")[0]!;
    assert.equal(result.name, "ask_user");
    assert.deepEqual(JSON.parse(String(result.outcome.value)), { text: "blue" });
    assert.equal(ofKind(rest, "done")[0]!.stopReason, StopReason.TEXT_RESPONSE);
  });
});

describe("steering", () => {
  test("SteerSession from another client reaches the running run", async () => {
    const sessionId = await approvalSession();
    const stream = client.streamTo(sessionId, "What is 6 * 7?")[Symbol.asyncIterator]();
    const before = await readUntil(stream, "approvalRequired");
    const request = ofKind(before, "approvalRequired")[0]!;

    const other = new PilothouseClient({ address: servers.address });
    try {
      assert.equal(
        await other.steerSession(sessionId, "Also say hello", "other"),
        before[0]!.runId,
      );
      await other.submitDecision(sessionId, approve(request.requestId));
    } finally {
      other.close();
    }
    const rest = await approveRest(sessionId, stream);
    assertContiguous([...before, ...rest]);
    const steered = ofKind(rest, "userSteered");
    assert.deepEqual(
      steered.map((s) => [s.content, s.sender]),
      [["Also say hello", "other"]],
    );
    assert.equal(ofKind(rest, "done")[0]!.stopReason, StopReason.TEXT_RESPONSE);
    const history = await client.listMessages(sessionId);
    assert.ok(history.some((m) => m.role === Role.USER && m.content === "Also say hello"));
  });

  test("Steer: steering and the decision on the same bidirectional stream", async () => {
    const sessionId = await approvalSession();
    const steer = client.steer(sessionId, "What is 6 * 7?", { sender: "ts" });
    const events: AgentEvent[] = [];
    for await (const event of steer) {
      events.push(event);
      if (event.event.case === "approvalRequired") {
        if (ofKind(events, "approvalRequired").length === 1) {
          steer.send("And keep it short");
        }
        steer.approve(event.event.value.requestId);
      }
    }
    assertContiguous(events);
    const seen = kinds(events);
    assert.ok(seen.indexOf("approvalRequired") < seen.indexOf("decisionApplied"));
    assert.deepEqual(
      ofKind(events, "userSteered").map((s) => [s.content, s.sender]),
      [["And keep it short", "ts"]],
    );
    assert.equal(steer.response?.stopReason, StopReason.TEXT_RESPONSE);
    assert.equal(steer.runId, events[0]!.runId);
  });

  test("closing the sending side of Steer does not stop the run", async () => {
    const session = await client.createSession("assistant", unique("user"));
    const steer = client.steer(session.id, "What time is it?");
    steer.closeSend();
    const done = await steer.result();
    assert.equal(done.stopReason, StopReason.TEXT_RESPONSE);
    assert.throws(() => steer.send("too late"), /closed/);
  });

  test("steering a session with no active run is FAILED_PRECONDITION", async () => {
    const session = await client.createSession("assistant", unique("user"));
    await assert.rejects(client.steerSession(session.id, "hello?"), (error: unknown) => {
      assert.ok(error instanceof PilothouseError);
      assert.equal(error.code, Code.FailedPrecondition);
      assert.equal(error.codeName, "FAILED_PRECONDITION");
      assert.equal(error.domain, "pilothouse.v1");
      return true;
    });
  });
});

describe("cancellation", () => {
  test("Cancel stops a waiting run; the stream ends with done CANCELLED", async () => {
    const sessionId = await approvalSession();
    const stream = client.streamTo(sessionId, "What is 6 * 7?")[Symbol.asyncIterator]();
    const before = await readUntil(stream, "approvalRequired");

    const cancelled = await client.cancel(sessionId, { reason: "changed my mind" });
    assert.equal(cancelled.runId, before[0]!.runId);
    assert.equal(cancelled.alreadyFinished, false);
    assert.equal(cancelled.stopReason, StopReason.CANCELLED);
    const rest = await drain(stream);
    assertContiguous([...before, ...rest]);
    assert.equal(ofKind(rest, "done")[0]!.stopReason, StopReason.CANCELLED);

    const again = await client.cancel(sessionId, { runId: cancelled.runId });
    assert.equal(again.alreadyFinished, true);
    // History stays valid: the tool call that never ran has a result.
    const history = await client.listMessages(sessionId);
    const calls = history.flatMap((m) => m.toolCalls.map((c) => c.id));
    const answered = history.filter((m) => m.role === Role.TOOL).map((m) => m.toolCallId);
    assert.deepEqual(answered, calls);
  });

  test("Steer's cancel stops the run it follows", async () => {
    const sessionId = await approvalSession();
    const steer = client.steer(sessionId, "What is 6 * 7?");
    for await (const event of steer) {
      if (event.event.case === "approvalRequired") {
        steer.cancelRun("from the stream");
      }
    }
    assert.equal(steer.response?.stopReason, StopReason.CANCELLED);
    assert.equal((await client.getSession(sessionId)).lastRunStopReason, StopReason.CANCELLED);
  });
});

describe("errors", () => {
  test("an unknown session: NOT_FOUND with ErrorInfo SESSION_NOT_FOUND", async () => {
    await assert.rejects(client.getSession("no-such-session"), (error: unknown) => {
      assert.ok(error instanceof PilothouseError);
      assert.equal(error.code, Code.NotFound);
      assert.equal(error.codeName, "NOT_FOUND");
      assert.equal(error.reason, "SESSION_NOT_FOUND");
      assert.equal(error.domain, "pilothouse.v1");
      assert.deepEqual(error.metadata, { session_id: "no-such-session" });
      assert.match(error.rawMessage, /no-such-session/);
      assert.equal(error.message, `NOT_FOUND: ${error.rawMessage}`);
      assert.deepEqual(error.fieldViolations, []);
      assert.equal(error.retryDelayMs, undefined);
      return true;
    });
  });

  test("an empty message: INVALID_ARGUMENT with a BadRequest field violation", async () => {
    const session = await client.createSession("assistant", unique("user"));
    const stream = client.streamTo(session.id, "");
    await assert.rejects(stream.result(), (error: unknown) => {
      assert.ok(error instanceof PilothouseError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.domain, "pilothouse.v1");
      assert.ok(error.reason !== "");
      assert.deepEqual(
        error.fieldViolations.map((v) => v.field),
        ["content"],
      );
      assert.ok(error.fieldViolations[0]!.description.length > 0);
      return true;
    });
    // Nothing was started, so nothing was re-attached to.
    assert.equal(stream.reattachCount, 0);
  });

  test("a bad agent config names the field", async () => {
    await assert.rejects(client.createAgent({ name: "9 bad name" }), (error: unknown) => {
      assert.ok(error instanceof PilothouseError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.ok(
        error.fieldViolations.some((v) => v.field.endsWith("name")),
        JSON.stringify(error.fieldViolations),
      );
      return true;
    });
  });

  test("a second run on a busy session names the active run", async () => {
    const sessionId = await approvalSession();
    const stream = client.streamTo(sessionId, "What is 6 * 7?")[Symbol.asyncIterator]();
    const before = await readUntil(stream, "approvalRequired");
    await assert.rejects(client.sendTo(sessionId, "me too"), (error: unknown) => {
      assert.ok(error instanceof PilothouseError);
      assert.equal(error.code, Code.FailedPrecondition);
      assert.equal(error.metadata.active_run_id, before[0]!.runId);
      return true;
    });
    await client.cancel(sessionId);
    await drain(stream);
  });
});
