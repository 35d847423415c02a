/**
 * A run's event stream that survives cut connections.
 *
 * Every event of a run carries a `sequence` (1, 2, 3, ... with no gap, but
 * for the deltas merged with `mergeDeltas`), and
 * `RunService.Attach(session_id, run_id, after_sequence)` replays what came
 * after a sequence, then follows the live run. A RunStream remembers the
 * last sequence it delivered; when its stream fails with a code that means
 * "the connection broke" or ends before `done`, it re-attaches from there,
 * until `done`: no gap, no duplicate.
 *
 * The codes that mean a broken connection: UNAVAILABLE (connection refused
 * or lost, GOAWAY), INTERNAL (an HTTP/2 RST_STREAM with INTERNAL_ERROR, as
 * proxies send), DEADLINE_EXCEEDED (the stream's own `timeoutMs`), and
 * CANCELED when neither the caller's signal nor `PilothouseClient.close()`
 * asked for it: Node's http2 module closes every stream of a connection
 * that dies with RST_STREAM CANCEL, which Connect reports as CANCELED.
 */

import { type CallOptions, ConnectError } from "@connectrpc/connect";
import { Code, PilothouseError } from "./errors.js";
import type { AgentEvent, AgentResponse } from "./gen/pilothouse/v1/event_pb.js";

/** How a RunStream re-attaches after a cut. */
export interface ReattachOptions {
  /**
   * Re-attach attempts in a row (without an event or heartbeat in between)
   * before the error is thrown. Default 5; 0 never re-attaches.
   */
  readonly maxAttempts?: number;
  /** Wait before the first attempt, milliseconds (default 100); doubled each attempt. */
  readonly initialDelayMs?: number;
  /** Longest wait between attempts, milliseconds (default 2000). */
  readonly maxDelayMs?: number;
  /**
   * Status codes that count as a cut stream (default UNAVAILABLE, INTERNAL,
   * DEADLINE_EXCEEDED, CANCELED). CANCELED counts only when the caller did
   * not cancel (its signal, or closing the client).
   */
  readonly codes?: readonly Code[];
  /** Called before each attempt, after the delay was chosen; for logs and tests. */
  readonly onReattach?: (attempt: ReattachAttempt) => void;
}

/** What `ReattachOptions.onReattach` is told. */
export interface ReattachAttempt {
  readonly sessionId: string;
  /** The run re-attached to ("" before the first event of an `attach` on the active run). */
  readonly runId: string;
  /** Events after this sequence are asked for. */
  readonly afterSequence: bigint;
  /** 1 for the first attempt after the last event. */
  readonly attempt: number;
  /** Milliseconds waited before this attempt. */
  readonly delayMs: number;
  /** Why the previous stream ended. */
  readonly error: PilothouseError;
}

/** Options of `streamTo` and `attach` streams. */
export interface StreamOptions {
  /**
   * Stops receiving: the current stream is cancelled and iteration throws
   * CANCELED. The run itself goes on unless it was started with
   * `onDisconnect: CANCEL`.
   */
  readonly signal?: AbortSignal;
  /** Deadline of each stream (the first and every re-attach), milliseconds. Default none. */
  readonly timeoutMs?: number;
  /** Extra request headers, e.g. `traceparent`. */
  readonly headers?: CallOptions["headers"];
  /** Also deliver `heartbeat` events (default false: they are swallowed). */
  readonly heartbeats?: boolean;
  /** Heartbeat interval the server uses on this stream while the run is quiet, milliseconds. */
  readonly heartbeatIntervalMs?: number;
  /** Re-attach settings, or `false` to surface the first cut as an error. */
  readonly reattach?: ReattachOptions | false;
  /**
   * Merge the text and thinking deltas that wait while this stream falls
   * behind into one delta each (their texts joined, the sequence of the
   * last; `RunOptions.merge_deltas`). Default false: every event on its own.
   */
  readonly mergeDeltas?: boolean;
}

/** Opens one stream of events after `afterSequence`; its items may carry no event. */
export type EventSource = (afterSequence: bigint) => AsyncIterable<{ event?: AgentEvent }>;

const DEFAULT_CODES: readonly Code[] = [
  Code.Unavailable,
  Code.Internal,
  Code.DeadlineExceeded,
  Code.Canceled,
];

/**
 * The events of one run, as an async iterable (iterate it once), ending
 * with the `done` event. Errors are thrown as `PilothouseError`.
 *
 * `sessionId`, `runId` (known from the first event), `lastSequence` (of the
 * last event delivered), `response` (the `done` payload, once seen) and
 * `reattachCount` can be read at any time.
 */
export class RunStream implements AsyncIterable<AgentEvent> {
  readonly sessionId: string;
  runId: string;
  lastSequence: bigint;
  response: AgentResponse | undefined;
  reattachCount = 0;

  private readonly first: EventSource;
  private readonly reattachFrom: EventSource;
  private readonly options: StreamOptions;
  private readonly resumable: boolean;
  private readonly closed: () => boolean;
  private iterated = false;

  /**
   * @param first opens the first stream (StreamTo, or Attach).
   * @param reattachFrom opens the stream after a cut (Attach on `runId`).
   * @param resumable whether a cut before the first event may be
   *   re-attached (true for Attach, false for StreamTo: before its first
   *   event nobody knows whether the run started).
   * @param closed tells whether the client was closed (no re-attach then).
   */
  constructor(init: {
    sessionId: string;
    runId?: string;
    afterSequence?: bigint;
    first: EventSource;
    reattachFrom: EventSource;
    resumable: boolean;
    closed?: () => boolean;
    options?: StreamOptions;
  }) {
    this.sessionId = init.sessionId;
    this.runId = init.runId ?? "";
    this.lastSequence = init.afterSequence ?? 0n;
    this.first = init.first;
    this.reattachFrom = init.reattachFrom;
    this.resumable = init.resumable;
    this.closed = init.closed ?? (() => false);
    this.options = init.options ?? {};
  }

  [Symbol.asyncIterator](): AsyncIterator<AgentEvent> {
    if (this.iterated) {
      throw new Error("a RunStream can be iterated once");
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
    let open = this.first;
    let attempt = 0;
    let seenEvent = false;
    for (;;) {
      let failure: PilothouseError;
      try {
        for await (const item of open(this.lastSequence)) {
          const event = item.event;
          if (event === undefined) {
            continue;
          }
          attempt = 0;
          if (event.event.case === "heartbeat") {
            if (this.options.heartbeats) {
              yield event;
            }
            continue;
          }
          if (event.sequence <= this.lastSequence) {
            continue; // already delivered (a re-attach that overlapped)
          }
          const merged =
            this.options.mergeDeltas === true &&
            (event.event.case === "textDelta" || event.event.case === "thinkingDelta");
          if (this.lastSequence > 0n && event.sequence !== this.lastSequence + 1n && !merged) {
            throw new PilothouseError(
              new ConnectError(
                `event ${event.sequence} follows ${this.lastSequence}: events were lost`,
                Code.DataLoss,
              ),
            );
          }
          seenEvent = true;
          this.lastSequence = event.sequence;
          if (this.runId === "") {
            this.runId = event.runId;
          }
          if (event.event.case === "done") {
            this.response = event.event.value;
          }
          yield event;
          if (this.response !== undefined) {
            return;
          }
        }
        failure = new PilothouseError(
          new ConnectError("the stream ended before the run's done event", Code.Unavailable),
        );
      } catch (error) {
        failure = PilothouseError.from(error);
      }
      attempt += 1;
      const delayMs = this.reattachDelay(failure, attempt, seenEvent);
      if (delayMs === undefined) {
        throw failure;
      }
      this.reattachCount += 1;
      const settings = this.options.reattach || {};
      settings.onReattach?.({
        sessionId: this.sessionId,
        runId: this.runId,
        afterSequence: this.lastSequence,
        attempt,
        delayMs,
        error: failure,
      });
      await sleep(delayMs, this.options.signal);
      open = this.reattachFrom;
    }
  }

  /** Milliseconds to wait before re-attaching, or undefined to give up. */
  private reattachDelay(
    failure: PilothouseError,
    attempt: number,
    seenEvent: boolean,
  ): number | undefined {
    const settings = this.options.reattach;
    if (settings === false || this.options.signal?.aborted || this.closed()) {
      return undefined;
    }
    if (!seenEvent && !this.resumable) {
      return undefined;
    }
    const codes = settings?.codes ?? DEFAULT_CODES;
    if (!codes.includes(failure.code) || attempt > (settings?.maxAttempts ?? 5)) {
      return undefined;
    }
    const initial = settings?.initialDelayMs ?? 100;
    return Math.min(initial * 2 ** (attempt - 1), settings?.maxDelayMs ?? 2000);
  }
}

/** Wait `ms`, or reject with the signal's reason once it aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(PilothouseError.from(signal.reason));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(PilothouseError.from(signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
