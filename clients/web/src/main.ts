/**
 * The Pilothouse web console: agents, the caller's sessions (with search)
 * and their transcripts, live runs as they stream, with steer, cancel and
 * approve/deny. Served by `pilothouse-server` on its web port; every call
 * goes to that port over Connect, with the token given here as a bearer
 * token.
 */

import type { Agent } from "../../typescript/src/gen/pilothouse/v1/agent_pb.js";
import type { Session } from "../../typescript/src/gen/pilothouse/v1/session_pb.js";
import { Api, type ConsoleConfig, describe, savedToken, saveToken } from "./api.js";
import { clear, h } from "./dom.js";
import { renderHistory, RunView } from "./transcript.js";

const api = new Api();
let config: ConsoleConfig = { trace_url: "", methods: [] };
let agents: Agent[] = [];
let selectedAgent = "";
let session: Session | undefined;
let live: { view: RunView; abort: AbortController } | undefined;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const agentList = $("agents");
const sessionList = $("sessions");
const search = $<HTMLInputElement>("search");
const transcript = $("transcript");
const title = $("session-title");
const composer = $<HTMLTextAreaElement>("message");
const sendButton = $<HTMLButtonElement>("send");
const steerButton = $<HTMLButtonElement>("steer");
const cancelButton = $<HTMLButtonElement>("cancel");
const status = $("status");

function say(text: string, error = false): void {
  status.textContent = text;
  status.classList.toggle("error", error);
}

async function guarded(work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (error) {
    say(describe(error), true);
  }
}

// --- agents and sessions ------------------------------------------------

async function loadAgents(): Promise<void> {
  agents = await api.listAgents();
  clear(agentList);
  for (const agent of agents) {
    const name = agent.config?.name ?? "";
    agentList.append(
      h(
        "li",
        {
          class: name === selectedAgent ? "selected" : undefined,
          "data-testid": "agent",
          "data-name": name,
          onclick: () => void selectAgent(name),
        },
        h("span", { class: "name" }, name),
        h("span", { class: "meta" }, agent.config?.description || agent.config?.model || ""),
      ),
    );
  }
  if (!selectedAgent && agents.length > 0) {
    await selectAgent(agents[0]!.config?.name ?? "");
  }
}

async function selectAgent(name: string): Promise<void> {
  selectedAgent = name;
  for (const item of agentList.querySelectorAll<HTMLElement>("li")) {
    item.classList.toggle("selected", item.dataset.name === name);
  }
  $("new-session").textContent = `New session with ${name}`;
}

async function loadSessions(): Promise<void> {
  const found = await api.searchSessions(search.value);
  clear(sessionList);
  for (const { session: s, snippet } of found) {
    sessionList.append(
      h(
        "li",
        {
          class: s.id === session?.id ? "selected" : undefined,
          "data-testid": "session",
          "data-id": s.id,
          onclick: () => void guarded(() => openSession(s.id)),
        },
        h("span", { class: "name" }, s.title || "(untitled)"),
        h(
          "span",
          { class: "meta" },
          `${s.agent} · ${s.messageCount} messages${s.activeRunId ? " · running" : ""}`,
        ),
        snippet ? h("span", { class: "snippet", "data-testid": "snippet" }, snippet) : null,
      ),
    );
  }
  if (found.length === 0) {
    sessionList.append(
      h("li", { class: "empty" }, search.value ? "no session matches" : "no sessions yet"),
    );
  }
}

async function openSession(sessionId: string): Promise<void> {
  stopFollowing();
  session = await api.getSession(sessionId);
  showSession();
  const messages = await api.listMessages(sessionId);
  clear(transcript);
  transcript.append(renderHistory(messages));
  if (session.activeRunId) {
    follow((signal) => api.attach(sessionId, session!.activeRunId, signal), true);
  }
  void loadSessions();
}

function showSession(): void {
  title.textContent = session
    ? `${session.title || "(untitled)"} · ${session.agent}`
    : "No session";
  title.dataset.sessionId = session?.id ?? "";
  for (const item of sessionList.querySelectorAll<HTMLElement>("li")) {
    item.classList.toggle("selected", item.dataset.id === session?.id);
  }
  updateButtons();
}

async function newSession(): Promise<void> {
  if (!selectedAgent) {
    say("pick an agent first", true);
    return;
  }
  stopFollowing();
  session = await api.createSession(selectedAgent);
  clear(transcript);
  showSession();
  await loadSessions();
}

// --- runs -----------------------------------------------------------------

function follow(
  open: (signal: AbortSignal) => ReturnType<Api["streamTo"]>,
  attached = false,
): void {
  const abort = new AbortController();
  const view = new RunView({
    decide: async (decision) => {
      await api.runs.submitDecision({ sessionId: session!.id, decision }, { timeoutMs: 30_000 });
    },
    traceUrl: (traceId) =>
      config.trace_url ? config.trace_url.replace("{trace_id}", traceId) : "",
  });
  if (attached) {
    view.element.dataset.attached = "true";
  }
  live = { view, abort };
  transcript.append(view.element);
  updateButtons();
  const stream = open(abort.signal);
  void (async () => {
    try {
      for await (const event of stream) {
        view.handle(event);
        view.element.scrollIntoView({ block: "end" });
      }
      say(`run ${stream.runId} ended`);
    } catch (error) {
      if (!abort.signal.aborted) {
        view.failed(describe(error));
        say(describe(error), true);
      }
    } finally {
      if (live?.view === view) {
        live = undefined;
      }
      updateButtons();
      void loadSessions();
    }
  })();
}

function stopFollowing(): void {
  live?.abort.abort();
  live = undefined;
}

async function send(): Promise<void> {
  const content = composer.value.trim();
  if (!content) {
    return;
  }
  if (!session) {
    await newSession();
  }
  composer.value = "";
  const sessionId = session!.id;
  follow((signal) => api.streamTo(sessionId, content, signal));
}

async function steer(): Promise<void> {
  const content = composer.value.trim();
  if (!content || !session) {
    return;
  }
  await api.runs.steerSession({ sessionId: session.id, content }, { timeoutMs: 30_000 });
  composer.value = "";
  say("steering sent");
}

async function cancel(): Promise<void> {
  if (!session) {
    return;
  }
  const reply = await api.runs.cancel(
    {
      sessionId: session.id,
      runId: live?.view.runId ?? "",
      reason: "cancelled in the web console",
    },
    { timeoutMs: 30_000 },
  );
  say(reply.alreadyFinished ? "the run had already finished" : "run cancelled");
}

function updateButtons(): void {
  const running = live !== undefined;
  sendButton.disabled = running;
  steerButton.disabled = !running;
  cancelButton.disabled = !running;
  document.body.dataset.running = String(running);
}

// --- start ----------------------------------------------------------------

function wire(): void {
  sendButton.addEventListener("click", () => void guarded(send));
  steerButton.addEventListener("click", () => void guarded(steer));
  cancelButton.addEventListener("click", () => void guarded(cancel));
  $("new-session").addEventListener("click", () => void guarded(newSession));
  composer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      void guarded(live ? steer : send);
    }
  });
  let searching: number | undefined;
  search.addEventListener("input", () => {
    clearTimeout(searching);
    searching = window.setTimeout(() => void guarded(loadSessions), 200);
  });
  const token = $<HTMLInputElement>("token");
  token.value = savedToken();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveToken(token.value.trim());
    void guarded(start);
  });
}

async function start(): Promise<void> {
  say("connecting…");
  await loadAgents();
  await loadSessions();
  say(`${agents.length} agent(s)`);
  document.body.dataset.ready = "true";
}

wire();
updateButtons();
void guarded(async () => {
  config = await api.config();
  await start();
});
