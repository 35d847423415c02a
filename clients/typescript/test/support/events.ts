/** Small helpers to look at a run's events in assertions. */

import assert from "node:assert/strict";
import type { AgentEvent } from "../../src/index.js";

/** The oneof case of each event: "runStarted", "textDelta", ..., "done". */
export function kinds(events: readonly AgentEvent[]): string[] {
  return events.map((event) => event.event.case ?? "unset");
}

/** Sequences are `first`, `first + 1`, ... with no gap and no duplicate. */
export function assertContiguous(events: readonly AgentEvent[], first = 1n): void {
  const sequences = events.map((event) => event.sequence);
  const expected = sequences.map((_, index) => first + BigInt(index));
  assert.deepEqual(sequences, expected);
}

type Case = NonNullable<AgentEvent["event"]["case"]>;
type Payloads = { [C in Case]: Extract<AgentEvent["event"], { case: C }>["value"] };

/** The payloads of the events of `kind`, typed. */
export function ofKind<K extends Case>(events: readonly AgentEvent[], kind: K): Payloads[K][] {
  return events.flatMap((event) =>
    event.event.case === kind ? [event.event.value as Payloads[K]] : [],
  );
}

/** A name no other test uses, for agents and identities. */
export function unique(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}
