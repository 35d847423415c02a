/**
 * The bidirectional `RunService.Steer` call: one stream that starts (or
 * attaches to) a run, carries its events back, and takes steering,
 * cancellation and decisions from the client while the run goes on.
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import type { DecisionInit } from "./decisions.js";
import { PilothouseError } from "./errors.js";
import type { AgentEvent, AgentResponse } from "./gen/pilothouse/v1/event_pb.js";
import type { SteerRequestSchema, SteerResponse } from "./gen/pilothouse/v1/run_service_pb.js";
import { approve, deny } from "./decisions.js";

/** One request of a Steer call, as it may be written. */
export type SteerRequestInit = MessageInitShape<typeof SteerRequestSchema>;

/**
 * Requests fed by `push`, read by Connect as the call's request stream (an
 * async generator: Connect needs `return` and `throw` on it). Ends after
 * `close`, once the queued requests are read.
 */
class RequestQueue<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) {
      throw new Error("the Steer stream's sending side is closed");
    }
    this.items.push(item);
    this.notify();
  }

  close(): void {
    this.closed = true;
    this.notify();
  }

  async *drain(): AsyncGenerator<T, void, undefined> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
        } else if (this.closed) {
          return;
        } else {
          await new Promise<void>((resolve) => {
            this.wake = resolve;
          });
        }
      }
    } finally {
      this.closed = true;
      this.items.length = 0;
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

/**
 * A `Steer` call. Iterate it (once) for the run's events, ending with
 * `done`; meanwhile `send` steering, `decide` (or `approve`/`deny`) pending
 * approvals and questions, `cancelRun`. Requests are queued and written in
 * order. `closeSend` half-closes the call: the run goes on and its events
 * keep coming until `done`. Errors are thrown as `PilothouseError`.
 *
 * A Steer call does not re-attach by itself after a cut (a steering message
 * in flight could be lost or applied); re-attach with
 * `PilothouseClient.steerAttach(sessionId, { runId, afterSequence })`.
 */
export class SteerStream implements AsyncIterable<AgentEvent> {
  /** The run, once its first event arrived (or as given to attach). */
  runId: string;
  /** Sequence of the last event delivered (0n before any). */
  lastSequence = 0n;
  /** The `done` payload, once seen. */
  response: AgentResponse | undefined;

  private readonly queue = new RequestQueue<SteerRequestInit>();
  private readonly open: (
    requests: AsyncIterable<SteerRequestInit>,
  ) => AsyncIterable<SteerResponse>;
  private readonly heartbeats: boolean;
  private iterated = false;

  constructor(init: {
    first: SteerRequestInit;
    open: (requests: AsyncIterable<SteerRequestInit>) => AsyncIterable<SteerResponse>;
    runId?: string;
    heartbeats?: boolean;
  }) {
    this.open = init.open;
    this.runId = init.runId ?? "";
    this.heartbeats = init.heartbeats ?? false;
    this.queue.push(init.first);
  }

  /** Queue steering content for the run (appended before its next model round). */
  send(content: string, sender = ""): void {
    this.queue.push({ action: { case: "steer", value: { content, sender } } });
  }

  /** Answer an approval or a question (see `approve`, `deny`, `answer` in decisions). */
  decide(decision: DecisionInit): void {
    this.queue.push({ action: { case: "decision", value: decision } });
  }

  /** Approve the pending tool call `requestId`. */
  approve(requestId: string): void {
    this.decide(approve(requestId));
  }

  /** Deny the pending tool call `requestId`; the model reads `reason`. */
  deny(requestId: string, reason = ""): void {
    this.decide(deny(requestId, reason));
  }

  /** Ask the run to stop; its `done` (STOP_REASON_CANCELLED) still arrives. */
  cancelRun(reason = ""): void {
    this.queue.push({ action: { case: "cancel", value: { reason } } });
  }

  /** Close the sending side. The run is not cancelled; events go on until `done`. */
  closeSend(): void {
    this.queue.close();
  }

  [Symbol.asyncIterator](): AsyncIterator<AgentEvent> {
    if (this.iterated) {
      throw new Error("a SteerStream can be iterated once");
    }
    this.iterated = true;
    return this.events();
  }

  /**
   * Read the stream to its end and return the run's outcome (`done`); after
   * an iteration that reached `done`, return it at once.
   */
  async result(): Promise<AgentResponse> {
    if (!this.iterated) {
      for await (const _event of this) {
        // Only the end matters.
      }
    }
    if (this.response === undefined) {
      throw new Error("no done event: the stream ended early, or is still being read");
    }
    return this.response;
  }

  private async *events(): AsyncGenerator<AgentEvent, void, undefined> {
    try {
      for await (const response of this.open(this.queue.drain())) {
        const event = response.event;
        if (event === undefined) {
          continue;
        }
        if (event.event.case === "heartbeat") {
          if (this.heartbeats) {
            yield event;
          }
          continue;
        }
        this.lastSequence = event.sequence;
        if (this.runId === "") {
          this.runId = event.runId;
        }
        if (event.event.case === "done") {
          this.response = event.event.value;
        }
        yield event;
      }
    } catch (error) {
      throw PilothouseError.from(error);
    } finally {
      this.queue.close();
    }
  }
}
