/**
 * `PilothouseClient`: typed helpers over AgentService, SessionService and
 * RunService, on Connect's gRPC transport for Node.js (HTTP/2).
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  type CallOptions,
  type Client,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { DecisionInit } from "./decisions.js";
import { translated } from "./errors.js";
import type { Agent, AgentConfigSchema } from "./gen/pilothouse/v1/agent_pb.js";
import { AgentService } from "./gen/pilothouse/v1/agent_service_pb.js";
import type { Message } from "./gen/pilothouse/v1/message_pb.js";
import {
  type CancelResponse,
  type RunOptionsSchema,
  RunService,
  type SendToResponse,
} from "./gen/pilothouse/v1/run_service_pb.js";
import type { Session, SessionState } from "./gen/pilothouse/v1/session_pb.js";
import {
  type CompactSessionResponse,
  SessionService,
} from "./gen/pilothouse/v1/session_service_pb.js";
import { RunStream, type StreamOptions } from "./run-stream.js";
import { SteerStream } from "./steer.js";

/** The runtime's default address. */
export const DEFAULT_ADDRESS = "http://127.0.0.1:50051";
/** Default deadline of unary calls, milliseconds. Streams and `sendTo` have none. */
export const DEFAULT_TIMEOUT_MS = 30_000;
/** Message size limit in both directions, as the server's default (16 MiB). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** An `AgentConfig` as it may be written (see `pilothouse.v1.AgentConfig`). */
export type AgentConfigInit = MessageInitShape<typeof AgentConfigSchema>;
/** `RunOptions` as they may be written (see `pilothouse.v1.RunOptions`). */
export type RunOptionsInit = MessageInitShape<typeof RunOptionsSchema>;

/** How to reach the runtime. */
export interface ClientOptions {
  /**
   * `http://host:port` (plaintext HTTP/2, as the runtime serves) or
   * `https://host:port`; a bare `host:port` means `http://`. Default
   * `http://127.0.0.1:50051`.
   */
  readonly address?: string;
  /**
   * Use this transport instead of creating one, e.g. Connect-Web's
   * `createGrpcWebTransport` in a browser behind a gRPC-Web proxy.
   * `address`, `interceptors` and `pingIntervalMs` are then ignored.
   */
  readonly transport?: Transport;
  /** Deadline of unary calls, milliseconds (default 30 000; 0: none). */
  readonly timeoutMs?: number;
  /** Connect interceptors, e.g. to add auth or `traceparent` headers. */
  readonly interceptors?: Interceptor[];
  /**
   * HTTP/2 PING interval on connections with open streams, milliseconds
   * (default 30 000). The runtime refuses pings more often than every
   * 10 s (`PILOTHOUSE_GRPC_MIN_PING_INTERVAL`).
   */
  readonly pingIntervalMs?: number;
}

/** Options of `sendTo`, `streamTo` and `steer`. */
export interface RunCallOptions {
  /** Who sends the message (a user id, a channel, another agent); may be empty. */
  readonly sender?: string;
  /** Run options: disconnect, active-run and late-steering policies, timeout, budget. */
  readonly options?: RunOptionsInit;
}

/** Filters of `listSessions`. */
export interface SessionFilter {
  readonly agent?: string;
  readonly createdBy?: string;
  readonly state?: SessionState;
}

/**
 * A client of one Pilothouse runtime. Every method throws
 * `PilothouseError` on failure; `close()` closes the connection.
 *
 * The generated Connect clients are public as `agents`, `sessions` and
 * `runs` for anything the helpers do not cover (they throw `ConnectError`).
 */
export class PilothouseClient {
  readonly agents: Client<typeof AgentService>;
  readonly sessions: Client<typeof SessionService>;
  readonly runs: Client<typeof RunService>;
  readonly timeoutMs: number;
  private readonly sessionManager: Http2SessionManager | undefined;
  private closed = false;

  constructor(options: ClientOptions = {}) {
    let transport = options.transport;
    if (transport === undefined) {
      const baseUrl = normaliseAddress(options.address ?? DEFAULT_ADDRESS);
      this.sessionManager = new Http2SessionManager(baseUrl, {
        pingIntervalMs: options.pingIntervalMs ?? 30_000,
        pingTimeoutMs: 10_000,
      });
      transport = createGrpcTransport({
        baseUrl,
        sessionManager: this.sessionManager,
        interceptors: options.interceptors ?? [],
        readMaxBytes: MAX_MESSAGE_BYTES,
        writeMaxBytes: MAX_MESSAGE_BYTES,
      });
    }
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.agents = createClient(AgentService, transport);
    this.sessions = createClient(SessionService, transport);
    this.runs = createClient(RunService, transport);
  }

  /** Close the HTTP/2 connection (open streams end with CANCELED or UNAVAILABLE). */
  close(): void {
    this.closed = true;
    this.sessionManager?.abort();
  }

  private unary(): CallOptions {
    return this.timeoutMs > 0 ? { timeoutMs: this.timeoutMs } : {};
  }

  // --- Agents ------------------------------------------------------------

  /** Register an agent. ALREADY_EXISTS, INVALID_ARGUMENT, FAILED_PRECONDITION (unknown tool). */
  async createAgent(config: AgentConfigInit): Promise<Agent> {
    const reply = await translated(() => this.agents.createAgent({ config }, this.unary()));
    return reply.agent!;
  }

  /** One agent by name. NOT_FOUND if unknown. */
  async getAgent(name: string): Promise<Agent> {
    const reply = await translated(() => this.agents.getAgent({ name }, this.unary()));
    return reply.agent!;
  }

  /** Every agent, alphabetically (follows the pages). */
  async listAgents(pageSize = 0): Promise<Agent[]> {
    return allPages(async (pageToken) => {
      const reply = await translated(() =>
        this.agents.listAgents({ pageSize, pageToken }, this.unary()),
      );
      return [reply.agents, reply.nextPageToken];
    });
  }

  /** Remove an agent; its sessions stay readable. NOT_FOUND if unknown. */
  async deleteAgent(name: string): Promise<void> {
    await translated(() => this.agents.deleteAgent({ name }, this.unary()));
  }

  // --- Sessions ----------------------------------------------------------

  /** Open a new session with `agent`. NOT_FOUND if the agent is unknown. */
  async createSession(agent: string, createdBy = ""): Promise<Session> {
    const reply = await translated(() =>
      this.sessions.createSession({ agent, createdBy }, this.unary()),
    );
    return reply.session!;
  }

  /** The open session of (`agent`, `createdBy`), opened if there is none. */
  async getOrCreateSession(
    agent: string,
    createdBy = "",
  ): Promise<{ session: Session; created: boolean }> {
    const reply = await translated(() =>
      this.sessions.getOrCreateSession({ agent, createdBy }, this.unary()),
    );
    return { session: reply.session!, created: reply.created };
  }

  /** One session. NOT_FOUND (reason SESSION_NOT_FOUND) if unknown. */
  async getSession(sessionId: string): Promise<Session> {
    const reply = await translated(() => this.sessions.getSession({ sessionId }, this.unary()));
    return reply.session!;
  }

  /** Every matching session, most recently active first (follows the pages). */
  async listSessions(filter: SessionFilter = {}, pageSize = 0): Promise<Session[]> {
    return allPages(async (pageToken) => {
      const reply = await translated(() =>
        this.sessions.listSessions({ ...filter, pageSize, pageToken }, this.unary()),
      );
      return [reply.sessions, reply.nextPageToken];
    });
  }

  /** Close a session: history stays readable, new runs fail. FAILED_PRECONDITION while a run is active. */
  async closeSession(sessionId: string): Promise<Session> {
    const reply = await translated(() => this.sessions.closeSession({ sessionId }, this.unary()));
    return reply.session!;
  }

  /** Delete a session and its history. FAILED_PRECONDITION while a run is active. */
  async deleteSession(sessionId: string): Promise<void> {
    await translated(() => this.sessions.deleteSession({ sessionId }, this.unary()));
  }

  /** A session's whole history, oldest first unless `newestFirst` (follows the pages). */
  async listMessages(
    sessionId: string,
    options: { newestFirst?: boolean; pageSize?: number } = {},
  ): Promise<Message[]> {
    return allPages(async (pageToken) => {
      const reply = await translated(() =>
        this.sessions.listMessages(
          {
            sessionId,
            pageToken,
            pageSize: options.pageSize ?? 0,
            newestFirst: options.newestFirst ?? false,
          },
          this.unary(),
        ),
      );
      return [reply.messages, reply.nextPageToken];
    });
  }

  /** Summarise the history with the agent's model and replace it by the summary. */
  async compactSession(sessionId: string): Promise<CompactSessionResponse> {
    return translated(() => this.sessions.compactSession({ sessionId }, this.unary()));
  }

  /** The session as JSON Lines (UTF-8 bytes). */
  async exportSession(sessionId: string): Promise<Uint8Array> {
    const reply = await translated(() => this.sessions.exportSession({ sessionId }, this.unary()));
    return reply.content;
  }

  /** Import an exported session as a new session. */
  async importSession(content: Uint8Array): Promise<Session> {
    const reply = await translated(() => this.sessions.importSession({ content }, this.unary()));
    return reply.session!;
  }

  // --- Runs --------------------------------------------------------------

  /**
   * Send a message and wait for the run to finish. No deadline unless
   * `timeoutMs` is given. A run that fails is a response with
   * STOP_REASON_ERROR, not an exception.
   */
  async sendTo(
    sessionId: string,
    content: string,
    options: RunCallOptions & { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<SendToResponse> {
    return translated(() =>
      this.runs.sendTo(
        { sessionId, content, sender: options.sender ?? "", options: options.options },
        { timeoutMs: options.timeoutMs, signal: options.signal },
      ),
    );
  }

  /**
   * Send a message and stream the run's events, ending with `done`. The
   * stream re-attaches by itself when the connection is cut after the
   * first event (see `RunStream` and `StreamOptions.reattach`).
   */
  streamTo(
    sessionId: string,
    content: string,
    options: RunCallOptions & StreamOptions = {},
  ): RunStream {
    const runOptions = withStreamSettings(options.options, options);
    const stream: RunStream = new RunStream({
      sessionId,
      resumable: false,
      closed: () => this.closed,
      options,
      first: () =>
        this.runs.streamTo(
          { sessionId, content, sender: options.sender ?? "", options: runOptions },
          streamCall(options),
        ),
      reattachFrom: (afterSequence) =>
        this.attachCall(sessionId, stream.runId, afterSequence, options),
    });
    return stream;
  }

  /**
   * Follow a run that is already going (or finished, within the server's
   * event retention): its events after `afterSequence` (default 0: all),
   * then live ones. `runId` "" means the session's active run. Re-attaches
   * by itself after a cut, like `streamTo`.
   */
  attach(
    sessionId: string,
    options: StreamOptions & { runId?: string; afterSequence?: bigint } = {},
  ): RunStream {
    const stream: RunStream = new RunStream({
      sessionId,
      runId: options.runId ?? "",
      afterSequence: options.afterSequence ?? 0n,
      resumable: true,
      closed: () => this.closed,
      options,
      first: (afterSequence) => this.attachCall(sessionId, stream.runId, afterSequence, options),
      reattachFrom: (afterSequence) =>
        this.attachCall(sessionId, stream.runId, afterSequence, options),
    });
    return stream;
  }

  private attachCall(
    sessionId: string,
    runId: string,
    afterSequence: bigint,
    options: StreamOptions,
  ) {
    return this.runs.attach(
      {
        sessionId,
        runId,
        afterSequence,
        heartbeatInterval:
          options.heartbeatIntervalMs === undefined
            ? undefined
            : durationFromMs(options.heartbeatIntervalMs),
        mergeDeltas: options.mergeDeltas ?? false,
      },
      streamCall(options),
    );
  }

  /**
   * Start a run on a bidirectional `Steer` call: steer, decide and cancel
   * on the same stream while reading its events.
   */
  steer(
    sessionId: string,
    content: string,
    options: RunCallOptions & Omit<StreamOptions, "reattach"> = {},
  ): SteerStream {
    const runOptions = withStreamSettings(options.options, options);
    return new SteerStream({
      first: {
        action: {
          case: "start",
          value: { sessionId, content, sender: options.sender ?? "", options: runOptions },
        },
      },
      open: (requests) => this.runs.steer(requests, streamCall(options)),
      heartbeats: options.heartbeats,
    });
  }

  /** A `Steer` call attached to a going run (after `afterSequence`; `runId` "": the active run). */
  steerAttach(
    sessionId: string,
    options: Omit<StreamOptions, "reattach"> & { runId?: string; afterSequence?: bigint } = {},
  ): SteerStream {
    return new SteerStream({
      first: {
        action: {
          case: "attach",
          value: {
            sessionId,
            runId: options.runId ?? "",
            afterSequence: options.afterSequence ?? 0n,
            heartbeatInterval:
              options.heartbeatIntervalMs === undefined
                ? undefined
                : durationFromMs(options.heartbeatIntervalMs),
            mergeDeltas: options.mergeDeltas ?? false,
          },
        },
      },
      open: (requests) => this.runs.steer(requests, streamCall(options)),
      runId: options.runId,
      heartbeats: options.heartbeats,
    });
  }

  /**
   * Queue steering content on the session's active run, from any client;
   * returns the run's id. FAILED_PRECONDITION when no run is active
   * (reason RUN_FINISHED when it has made its last round).
   */
  async steerSession(sessionId: string, content: string, sender = ""): Promise<string> {
    const reply = await translated(() =>
      this.runs.steerSession({ sessionId, content, sender }, this.unary()),
    );
    return reply.runId;
  }

  /**
   * Cancel a run (default: the session's active run) and return once it
   * has stopped and its history is stored. A finished run is OK
   * (`alreadyFinished`).
   */
  async cancel(
    sessionId: string,
    options: { runId?: string; reason?: string } = {},
  ): Promise<CancelResponse> {
    return translated(() =>
      this.runs.cancel(
        { sessionId, runId: options.runId ?? "", reason: options.reason ?? "" },
        this.unary(),
      ),
    );
  }

  /**
   * Answer an approval or a question of the session's active run (build
   * the decision with `approve`, `deny`, `approveAlways`, `answer`);
   * returns the run's id. NOT_FOUND when no such request is pending.
   */
  async submitDecision(sessionId: string, decision: DecisionInit): Promise<string> {
    const reply = await translated(() =>
      this.runs.submitDecision({ sessionId, decision }, this.unary()),
    );
    return reply.runId;
  }
}

/** `http://` in front of a bare `host:port`; URLs unchanged. */
export function normaliseAddress(address: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(address) ? address : `http://${address}`;
}

function streamCall(options: StreamOptions): CallOptions {
  return { signal: options.signal, timeoutMs: options.timeoutMs, headers: options.headers };
}

/** The run options with this stream's own settings (heartbeat interval, merged deltas) added. */
function withStreamSettings(options: RunOptionsInit | undefined, stream: StreamOptions) {
  let out = options;
  if (stream.heartbeatIntervalMs !== undefined) {
    out = { ...out, heartbeatInterval: durationFromMs(stream.heartbeatIntervalMs) };
  }
  if (stream.mergeDeltas !== undefined) {
    out = { ...out, mergeDeltas: stream.mergeDeltas };
  }
  return out;
}

async function allPages<T>(page: (token: string) => Promise<[T[], string]>): Promise<T[]> {
  const items: T[] = [];
  let token = "";
  do {
    const [batch, next] = await page(token);
    items.push(...batch);
    token = next;
  } while (token !== "");
  return items;
}
