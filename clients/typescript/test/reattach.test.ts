/**
 * Streams that are cut for real: the client reaches the runtime through a
 * TCP proxy the test kills mid-stream, or aborts its own stream, or lets a
 * stream deadline pass. The RunStream re-attaches from the last sequence it
 * saw and delivers every event once, in order, ending with `done`.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  ApprovalPolicy,
  approve,
  type AgentEvent,
  Code,
  PilothouseClient,
  PilothouseError,
  type ReattachAttempt,
  StopReason,
} from "../src/index.js";
import { assertContiguous, kinds, ofKind, unique } from "./support/events.js";
import { CuttableProxy } from "./support/proxy.js";
import { type Servers, startServers } from "./support/servers.js";

let servers: Servers;
let proxy: CuttableProxy;
/** Talks to the runtime directly: decisions, and the reference event log. */
let direct: PilothouseClient;

before(async () => {
  servers = await startServers();
  proxy = await CuttableProxy.start(servers.port);
  direct = new PilothouseClient({ address: servers.address });
});

after(async () => {
  direct?.close();
  await proxy?.close();
  await servers?.stop();
});

async function approvalSession(): Promise<string> {
  const agent = await direct.createAgent({
    name: unique("cut"),
    tools: ["calculate"],
    approvalPolicy: ApprovalPolicy.ALWAYS,
  });
  return (await direct.createSession(agent.config!.name, "ts-tests")).id;
}

/** Every event of the run, read from the runtime's log directly. */
async function logOf(sessionId: string, runId: string): Promise<AgentEvent[]> {
  const events: AgentEvent[] = [];
  for await (const event of direct.attach(sessionId, { runId })) {
    events.push(event);
  }
  return events;
}

describe("re-attach after a cut stream", () => {
  test("the proxy dies while the run waits: events made during the cut arrive once", async () => {
    const sessionId = await approvalSession();
    const viaProxy = new PilothouseClient({ address: proxy.address });
    const attempts: ReattachAttempt[] = [];
    try {
      const stream = viaProxy.streamTo(sessionId, "What is 6 * 7?", {
        reattach: { initialDelayMs: 20, onReattach: (attempt) => attempts.push(attempt) },
      });
      const events: AgentEvent[] = [];
      for await (const event of stream) {
        events.push(event);
        if (event.event.case === "approvalRequired" && attempts.length === 0) {
          // Cut every connection, keep new ones waiting, and let the run
          // finish meanwhile: what it does now must be replayed.
          proxy.hold();
          proxy.cut();
          await direct.submitDecision(sessionId, approve(event.event.value.requestId));
          const finished = await direct
            .attach(sessionId, { runId: event.runId, afterSequence: event.sequence })
            .result();
          assert.equal(finished.stopReason, StopReason.TEXT_RESPONSE);
          proxy.release();
        }
      }

      assertContiguous(events);
      assert.ok(attempts.length >= 1, "the stream was re-attached");
      const first = attempts[0]!;
      assert.equal(first.sessionId, sessionId);
      assert.equal(first.runId, events[0]!.runId);
      assert.equal(first.afterSequence, ofKindSequence(events, "approvalRequired"));
      assert.ok(
        [Code.Unavailable, Code.Internal, Code.Canceled].includes(first.error.code),
        `a cut surfaces as ${first.error.codeName}`,
      );
      assert.equal(stream.reattachCount, attempts.length);
      assert.equal(stream.response?.stopReason, StopReason.TEXT_RESPONSE);
      const seen = kinds(events);
      assert.ok(seen.includes("decisionApplied") && seen.includes("toolResult"));
      // Exactly the run's log: nothing lost, nothing twice.
      const log = await logOf(sessionId, stream.runId);
      assert.deepEqual(kinds(events), kinds(log));
      assert.deepEqual(
        events.map((e) => e.sequence),
        log.map((e) => e.sequence),
      );
    } finally {
      viaProxy.close();
    }
  });

  test("a cut while the run goes on: the re-attach races the live events", async () => {
    const sessionId = await approvalSession();
    const viaProxy = new PilothouseClient({ address: proxy.address });
    try {
      const stream = viaProxy.streamTo(sessionId, "What is 2 ** 10?", {
        reattach: { initialDelayMs: 1 },
      });
      const events: AgentEvent[] = [];
      for await (const event of stream) {
        events.push(event);
        if (event.event.case === "approvalRequired" && stream.reattachCount === 0) {
          proxy.cut();
          void direct.submitDecision(sessionId, approve(event.event.value.requestId));
        }
      }
      assertContiguous(events);
      assert.ok(stream.reattachCount >= 1);
      const log = await logOf(sessionId, stream.runId);
      assert.deepEqual(kinds(events), kinds(log));
      const text = ofKind(events, "textDelta")
        .map((d) => d.text)
        .join("");
      assert.equal(text, stream.response?.finalResponse);
    } finally {
      viaProxy.close();
    }
  });

  test("the stream's own deadline passes while the run waits: it re-attaches", async () => {
    const sessionId = await approvalSession();
    const attempts: ReattachAttempt[] = [];
    const events: AgentEvent[] = [];
    let decided = false;
    const stream = direct.streamTo(sessionId, "What is 6 * 7?", {
      timeoutMs: 800, // long enough for the first events, even on a busy machine
      reattach: {
        initialDelayMs: 10,
        onReattach: (attempt) => {
          attempts.push(attempt);
          const request = ofKind(events, "approvalRequired")[0];
          if (!decided && request && attempt.error.code === Code.DeadlineExceeded) {
            decided = true;
            void direct.submitDecision(sessionId, approve(request.requestId));
          }
        },
      },
    });
    for await (const event of stream) {
      events.push(event);
    }
    assertContiguous(events);
    assert.ok(attempts.some((a) => a.error.code === Code.DeadlineExceeded));
    assert.equal(stream.response?.stopReason, StopReason.TEXT_RESPONSE);
  });

  test("the caller's AbortSignal stops the stream without re-attaching; attach resumes it", async () => {
    const sessionId = await approvalSession();
    const abort = new AbortController();
    const stream = direct.streamTo(sessionId, "What is 6 * 7?", { signal: abort.signal });
    const events: AgentEvent[] = [];
    await assert.rejects(
      (async () => {
        for await (const event of stream) {
          events.push(event);
          if (event.event.case === "approvalRequired") {
            abort.abort();
          }
        }
      })(),
      (error: unknown) => {
        assert.ok(error instanceof PilothouseError);
        assert.equal(error.code, Code.Canceled);
        return true;
      },
    );
    assert.equal(stream.reattachCount, 0);
    const request = ofKind(events, "approvalRequired")[0]!;

    // The run went on (DISCONNECT_POLICY_CONTINUE): resume from where the stream stopped.
    const resumed = direct.attach(sessionId, {
      runId: stream.runId,
      afterSequence: stream.lastSequence,
    });
    const iterator = resumed[Symbol.asyncIterator]();
    await direct.submitDecision(sessionId, approve(request.requestId));
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
      events.push(next.value);
    }
    assertContiguous(events);
    assert.equal(resumed.response?.stopReason, StopReason.TEXT_RESPONSE);
  });

  test("closing the client ends its streams without re-attaching", async () => {
    const sessionId = await approvalSession();
    const closing = new PilothouseClient({ address: servers.address });
    const stream = closing.streamTo(sessionId, "What is 6 * 7?");
    await assert.rejects(
      (async () => {
        for await (const event of stream) {
          if (event.event.case === "approvalRequired") {
            closing.close();
          }
        }
      })(),
      (error: unknown) => error instanceof PilothouseError && error.code === Code.Canceled,
    );
    assert.equal(stream.reattachCount, 0);
    await direct.cancel(sessionId);
  });

  test("re-attaching is bounded: a runtime that stays away surfaces the error", async () => {
    const sessionId = await approvalSession();
    const viaProxy = new PilothouseClient({ address: proxy.address });
    const attempts: ReattachAttempt[] = [];
    try {
      const stream = viaProxy.streamTo(sessionId, "What is 6 * 7?", {
        reattach: { maxAttempts: 2, initialDelayMs: 10, onReattach: (a) => attempts.push(a) },
        timeoutMs: 500,
      });
      await assert.rejects(
        (async () => {
          for await (const event of stream) {
            if (event.event.case === "approvalRequired") {
              proxy.hold();
              proxy.cut();
            }
          }
        })(),
        (error: unknown) => error instanceof PilothouseError,
      );
      assert.deepEqual(
        attempts.map((a) => a.attempt),
        [1, 2],
      );
    } finally {
      proxy.release();
      viaProxy.close();
      await direct.cancel(sessionId);
    }
  });
});

function ofKindSequence(events: readonly AgentEvent[], kind: string): bigint {
  return events.find((event) => event.event.case === kind)!.sequence;
}
