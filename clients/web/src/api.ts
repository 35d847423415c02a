/**
 * The console's connection to the runtime: Connect over HTTP/1.1 to the
 * web port that served this page (same origin), with the generated
 * service descriptors of the TypeScript client and its transport-neutral
 * helpers (RunStream's re-attach, decoded errors, decisions).
 */

import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { approve, approveAlways, deny, answer } from "../../typescript/src/decisions.js";
import { PilothouseError } from "../../typescript/src/errors.js";
import { RunStream } from "../../typescript/src/run-stream.js";
import type { Agent } from "../../typescript/src/gen/pilothouse/v1/agent_pb.js";
import { AgentService } from "../../typescript/src/gen/pilothouse/v1/agent_service_pb.js";
import type { Message } from "../../typescript/src/gen/pilothouse/v1/message_pb.js";
import { RunService } from "../../typescript/src/gen/pilothouse/v1/run_service_pb.js";
import type { Session } from "../../typescript/src/gen/pilothouse/v1/session_pb.js";
import { SessionService } from "../../typescript/src/gen/pilothouse/v1/session_service_pb.js";

export { PilothouseError, RunStream, approve, approveAlways, deny, answer };

/** What the web port tells the console (`/console/config.json`). */
export interface ConsoleConfig {
  /** Trace viewer URL with `{trace_id}`; "" when none is configured. */
  readonly trace_url: string;
  /** The RPC paths the web port serves. */
  readonly methods: readonly string[];
}

/** A session in the sidebar, with the passage that matched a search. */
export interface Found {
  readonly session: Session;
  readonly snippet: string;
}

const TOKEN_KEY = "pilothouse.token";
/** Search results shown at most. */
const MAX_FOUND = 100;
const UNARY_TIMEOUT_MS = 30_000;

/** The bearer token this tab sends (kept for the tab's life only). */
export function savedToken(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function saveToken(token: string): void {
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

const bearer: Interceptor = (next) => async (request) => {
  const token = savedToken();
  if (token) {
    request.header.set("authorization", `Bearer ${token}`);
  }
  return next(request);
};

export class Api {
  readonly agents: Client<typeof AgentService>;
  readonly sessions: Client<typeof SessionService>;
  readonly runs: Client<typeof RunService>;

  constructor(baseUrl: string = window.location.origin) {
    const transport = createConnectTransport({ baseUrl, interceptors: [bearer] });
    this.agents = createClient(AgentService, transport);
    this.sessions = createClient(SessionService, transport);
    this.runs = createClient(RunService, transport);
  }

  async config(): Promise<ConsoleConfig> {
    const response = await fetch("/console/config.json");
    return (await response.json()) as ConsoleConfig;
  }

  async listAgents(): Promise<Agent[]> {
    return pages(async (pageToken) => {
      const reply = await this.agents.listAgents({ pageToken }, unary());
      return [reply.agents, reply.nextPageToken];
    });
  }

  async listSessions(): Promise<Session[]> {
    return pages(async (pageToken) => {
      const reply = await this.sessions.listSessions({ pageToken }, unary());
      return [reply.sessions, reply.nextPageToken];
    });
  }

  /**
   * The caller's sessions, most recently active first, or with a `query`
   * those whose messages match it (SessionService.SearchSessions: all the
   * words, "quoted phrases", `prefix*`), best first, each with its best
   * matching snippet.
   */
  async searchSessions(query: string): Promise<Found[]> {
    if (!query.trim()) {
      return (await this.listSessions()).map((session) => ({ session, snippet: "" }));
    }
    const found: Found[] = [];
    let pageToken = "";
    do {
      const reply = await this.sessions.searchSessions({ query, pageToken }, unary());
      for (const result of reply.results) {
        found.push({ session: result.session!, snippet: result.matches[0]?.snippet ?? "" });
      }
      pageToken = reply.nextPageToken;
    } while (pageToken !== "" && found.length < MAX_FOUND);
    return found;
  }

  async createSession(agent: string): Promise<Session> {
    const reply = await this.sessions.createSession({ agent }, unary());
    return reply.session!;
  }

  async getSession(sessionId: string): Promise<Session> {
    const reply = await this.sessions.getSession({ sessionId }, unary());
    return reply.session!;
  }

  async listMessages(sessionId: string): Promise<Message[]> {
    return pages(async (pageToken) => {
      const reply = await this.sessions.listMessages({ sessionId, pageToken }, unary());
      return [reply.messages, reply.nextPageToken];
    });
  }

  /** Send `content` and follow the run it starts (re-attaching after a cut). */
  streamTo(sessionId: string, content: string, signal: AbortSignal): RunStream {
    const stream: RunStream = new RunStream({
      sessionId,
      resumable: false,
      options: { signal },
      first: () => this.runs.streamTo({ sessionId, content }, { signal }),
      reattachFrom: (afterSequence) =>
        this.runs.attach({ sessionId, runId: stream.runId, afterSequence }, { signal }),
    });
    return stream;
  }

  /** Follow the session's active run from its first event. */
  attach(sessionId: string, runId: string, signal: AbortSignal): RunStream {
    const stream: RunStream = new RunStream({
      sessionId,
      runId,
      resumable: true,
      options: { signal },
      first: (afterSequence) =>
        this.runs.attach({ sessionId, runId: stream.runId, afterSequence }, { signal }),
      reattachFrom: (afterSequence) =>
        this.runs.attach({ sessionId, runId: stream.runId, afterSequence }, { signal }),
    });
    return stream;
  }
}

function unary() {
  return { timeoutMs: UNARY_TIMEOUT_MS };
}

async function pages<T>(page: (token: string) => Promise<[T[], string]>): Promise<T[]> {
  const all: T[] = [];
  let token = "";
  do {
    const [items, next] = await page(token);
    all.push(...items);
    token = next;
  } while (token !== "");
  return all;
}

/** A failure in words: the gRPC code name, the message, the ErrorInfo reason. */
export function describe(error: unknown): string {
  const failure = PilothouseError.from(error);
  const reason = failure.reason ? ` (${failure.reason})` : "";
  return `${failure.codeName}: ${failure.rawMessage}${reason}`;
}

/** The trace id of a W3C traceparent ("" when it is not one). */
export function traceIdOf(traceparent: string): string {
  const parts = traceparent.split("-");
  return parts.length === 4 && /^[0-9a-f]{32}$/.test(parts[1]!) ? parts[1]! : "";
}
