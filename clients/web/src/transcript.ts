/**
 * A session's transcript: the stored history, and live runs rendered
 * event by event as they stream (text, thinking, tool calls and their
 * results, approvals and questions with their buttons, steering, the end).
 */

import { create } from "@bufbuild/protobuf";
import type { DecisionInit } from "../../typescript/src/decisions.js";
import {
  type AgentEvent,
  type AgentResponse,
  type ApprovalRequired,
  type QuestionAsked,
  StopReason,
  type ToolResult,
  Verdict,
} from "../../typescript/src/gen/pilothouse/v1/event_pb.js";
import { type Message, Role } from "../../typescript/src/gen/pilothouse/v1/message_pb.js";
import { type ToolCall, ToolCallSchema } from "../../typescript/src/gen/pilothouse/v1/tool_pb.js";
import { answer, approve, approveAlways, deny, traceIdOf } from "./api.js";
import { h, prettyJson } from "./dom.js";

/** What a run view asks of the page. */
export interface RunActions {
  /** Send a decision on an approval or a question. Rejects with the error. */
  decide(decision: DecisionInit): Promise<void>;
  /** A trace viewer URL for `traceId`, or "" when none is configured. */
  traceUrl(traceId: string): string;
}

const CANCELLED_PREFIX = "cancelled: ";

type CardStatus =
  | "preparing"
  | "running"
  | "awaiting-approval"
  | "approved"
  | "denied"
  | "done"
  | "error"
  | "cancelled";

/** One tool call: name, arguments, status, result. */
class ToolCard {
  readonly element: HTMLElement;
  private readonly status: HTMLElement;
  private readonly args: HTMLElement;
  private readonly result: HTMLElement;
  readonly actions: HTMLElement;

  constructor(call: ToolCall, status: CardStatus) {
    this.status = h("span", { class: "status", "data-testid": "tool-status" });
    this.args = h("pre", { class: "args", "data-testid": "tool-args" });
    this.result = h("pre", { class: "result", "data-testid": "tool-result", hidden: true });
    this.actions = h("div", { class: "actions" });
    this.element = h(
      "div",
      { class: "tool", "data-testid": "tool-call", "data-call-id": call.id },
      h("div", { class: "tool-head" }, h("span", { class: "tool-name" }, call.name), this.status),
      this.args,
      this.actions,
      this.result,
    );
    this.setArguments(call.argumentsJson);
    this.setStatus(status);
  }

  setArguments(text: string): void {
    this.args.textContent = text ? prettyJson(text) : "";
    this.args.hidden = !text;
  }

  setStatus(status: CardStatus, note = ""): void {
    this.element.dataset.status = status;
    this.status.textContent = note
      ? `${status.replace("-", " ")} · ${note}`
      : status.replace("-", " ");
  }

  get current(): CardStatus {
    return this.element.dataset.status as CardStatus;
  }

  setResult(result: { output?: string; error?: string }, durationMs?: bigint): void {
    const failed = result.error !== undefined;
    this.result.hidden = false;
    this.result.classList.toggle("failed", failed);
    this.result.textContent = failed ? result.error! : (result.output ?? "");
    this.actions.replaceChildren();
    // The runtime answers a call that a cancel stopped with this error
    // (and stores it so, so the model knows it did not finish).
    const cancelled = failed && result.error!.startsWith(CANCELLED_PREFIX);
    const status = cancelled ? "cancelled" : failed ? "error" : "done";
    this.setStatus(status, durationMs === undefined ? "" : `${durationMs} ms`);
  }
}

function bubble(kind: "user" | "steer" | "assistant", text: string, label = ""): HTMLElement {
  return h(
    "div",
    { class: `bubble ${kind}`, "data-testid": `${kind}-message` },
    label ? h("div", { class: "label" }, label) : null,
    h("div", { class: "text" }, text),
  );
}

function thinkingBlock(text = ""): HTMLDetailsElement {
  const body = h("div", { class: "text" }, text);
  return h(
    "details",
    { class: "thinking", "data-testid": "thinking", open: true },
    h("summary", {}, "Thinking"),
    body,
  );
}

/** The stored history of a session, as read with ListMessages. */
export function renderHistory(messages: readonly Message[]): HTMLElement {
  const root = h("div", { class: "history", "data-testid": "history" });
  const cards = new Map<string, ToolCard>();
  for (const message of messages) {
    switch (message.role) {
      case Role.USER:
        if (!message.autoInjected) {
          root.append(bubble("user", message.content, message.sender));
        }
        break;
      case Role.ASSISTANT: {
        if (message.reasoningContent) {
          const thinking = thinkingBlock(message.reasoningContent);
          thinking.open = false;
          root.append(thinking);
        }
        if (message.content) {
          root.append(bubble("assistant", message.content));
        }
        for (const call of message.toolCalls) {
          const card = new ToolCard(call, "running");
          cards.set(call.id, card);
          root.append(card.element);
        }
        break;
      }
      case Role.TOOL: {
        const card = cards.get(message.toolCallId);
        const cancelled = message.content.startsWith(CANCELLED_PREFIX);
        card?.setResult(cancelled ? { error: message.content } : { output: message.content });
        break;
      }
      default:
        break; // system prompts and compaction summaries are not shown
    }
  }
  return root;
}

/** One run, live: fed its events in sequence order. */
export class RunView {
  readonly element: HTMLElement;
  private readonly body: HTMLElement;
  private readonly footer: HTMLElement;
  private readonly trace: HTMLElement;
  private text: HTMLElement | undefined;
  private thinking: HTMLDetailsElement | undefined;
  private readonly cards = new Map<string, ToolCard>();
  private readonly questions = new Map<string, HTMLElement>();
  private readonly actions: RunActions;
  runId = "";
  response: AgentResponse | undefined;

  constructor(actions: RunActions) {
    this.actions = actions;
    this.trace = h("span", { class: "trace", "data-testid": "trace" });
    this.body = h("div", { class: "run-body" });
    this.footer = h("div", { class: "run-footer", "data-testid": "run-footer" }, "running…");
    this.element = h(
      "section",
      { class: "run", "data-testid": "run", "data-state": "running" },
      h("div", { class: "run-head" }, h("span", { class: "run-id" }), this.trace),
      this.body,
      this.footer,
    );
  }

  handle(event: AgentEvent): void {
    if (!this.runId && event.runId) {
      this.runId = event.runId;
      this.element.dataset.runId = event.runId;
      this.element.querySelector(".run-id")!.textContent = `run ${event.runId}`;
    }
    const e = event.event;
    switch (e.case) {
      case "runStarted":
        this.body.append(bubble("user", e.value.content, e.value.sender));
        this.showTrace(e.value.traceparent);
        break;
      case "runQueued":
        this.note(`queued behind ${e.value.position} run(s)`);
        break;
      case "textStart":
        this.text = h("div", { class: "text" });
        this.body.append(
          h("div", { class: "bubble assistant", "data-testid": "assistant-message" }, this.text),
        );
        break;
      case "textDelta":
        this.openText().append(e.value.text);
        break;
      case "textEnd":
        this.text = undefined;
        break;
      case "thinkingStart":
        this.thinking = thinkingBlock();
        this.body.append(this.thinking);
        break;
      case "thinkingDelta":
        this.openThinking().querySelector(".text")!.append(e.value.text);
        break;
      case "thinkingEnd":
        if (this.thinking) {
          this.thinking.open = false;
        }
        this.thinking = undefined;
        break;
      case "toolCallsBegin":
        for (const call of e.value.toolCalls) {
          this.card(call, "preparing");
        }
        break;
      case "toolCallsStart":
        for (const call of e.value.toolCalls) {
          const card = this.card(call, "running");
          card.setArguments(call.argumentsJson);
          if (card.current === "preparing") {
            card.setStatus("running");
          }
        }
        break;
      case "approvalRequired":
        this.approval(e.value);
        break;
      case "questionAsked":
        this.question(e.value);
        break;
      case "decisionApplied":
        this.applied(e.value.requestId, e.value.decision?.verdict ?? Verdict.UNSPECIFIED);
        break;
      case "toolResult":
        this.result(e.value);
        break;
      case "userSteered":
        this.body.append(bubble("steer", e.value.content, "steered"));
        break;
      case "usage":
      case "contextUsage":
        break; // the totals come with done
      case "roundRetried":
        this.note(
          `model round retried (${e.value.cause})${e.value.model ? ` on ${e.value.model}` : ""}`,
        );
        break;
      case "runResumed":
        this.note(`resumed after ${e.value.reason || "an interruption"}`);
        break;
      case "compacted":
        this.note("history compacted");
        break;
      case "done":
        this.finish(e.value);
        break;
      default:
        break;
    }
  }

  /** The stream failed for good (after its re-attach attempts). */
  failed(message: string): void {
    this.element.dataset.state = "failed";
    this.footer.replaceChildren(h("span", { class: "error", "data-testid": "run-error" }, message));
  }

  private openText(): HTMLElement {
    if (!this.text) {
      this.handle({ event: { case: "textStart", value: {} } } as AgentEvent);
    }
    return this.text!;
  }

  private openThinking(): HTMLDetailsElement {
    if (!this.thinking) {
      this.thinking = thinkingBlock();
      this.body.append(this.thinking);
    }
    return this.thinking;
  }

  private note(text: string): void {
    this.body.append(h("div", { class: "note" }, text));
  }

  private showTrace(traceparent: string): void {
    const traceId = traceIdOf(traceparent);
    if (!traceId) {
      return;
    }
    this.element.dataset.traceId = traceId;
    const url = this.actions.traceUrl(traceId);
    const label = `trace ${traceId}`;
    this.trace.replaceChildren(
      url
        ? h(
            "a",
            {
              href: url,
              target: "_blank",
              rel: "noopener noreferrer",
              "data-testid": "trace-link",
            },
            label,
          )
        : h("code", { title: "set PILOTHOUSE_WEB_TRACE_URL to link a trace viewer" }, label),
    );
  }

  private card(call: ToolCall, status: CardStatus): ToolCard {
    let card = this.cards.get(call.id);
    if (!card) {
      card = new ToolCard(call, status);
      this.cards.set(call.id, card);
      this.text = undefined;
      this.body.append(card.element);
    }
    return card;
  }

  private approval(request: ApprovalRequired): void {
    const call = request.toolCall!;
    const card = this.card(call, "awaiting-approval");
    card.setArguments(call.argumentsJson);
    card.setStatus("awaiting-approval", request.reason);
    const decide = (decision: DecisionInit) => async () => {
      for (const button of card.actions.querySelectorAll("button")) {
        button.disabled = true;
      }
      try {
        await this.actions.decide(decision);
      } catch (error) {
        card.actions.append(h("span", { class: "error" }, String(error)));
        for (const button of card.actions.querySelectorAll("button")) {
          button.disabled = false;
        }
      }
    };
    this.questions.set(request.requestId, card.element);
    card.actions.replaceChildren(
      h(
        "button",
        { class: "approve", "data-testid": "approve", onclick: decide(approve(request.requestId)) },
        "Approve",
      ),
      h(
        "button",
        {
          class: "always",
          "data-testid": "approve-always",
          onclick: decide(approveAlways(request.requestId)),
        },
        "Always",
      ),
      h(
        "button",
        {
          class: "deny",
          "data-testid": "deny",
          onclick: decide(deny(request.requestId, "denied in the web console")),
        },
        "Deny",
      ),
    );
  }

  private question(asked: QuestionAsked): void {
    const box = h(
      "div",
      { class: "question", "data-testid": "question" },
      h("div", { class: "text" }, asked.question),
    );
    const send = async (reply: { selectedOptions?: string[]; text?: string }) => {
      for (const control of box.querySelectorAll("button, input")) {
        (control as HTMLButtonElement).disabled = true;
      }
      try {
        await this.actions.decide(answer(asked.requestId, reply));
      } catch (error) {
        box.append(h("span", { class: "error" }, String(error)));
      }
    };
    if (asked.options.length > 0 && !asked.multiSelect) {
      for (const option of asked.options) {
        box.append(
          h(
            "button",
            { "data-testid": "answer", onclick: () => void send({ selectedOptions: [option] }) },
            option,
          ),
        );
      }
    } else if (asked.options.length > 0) {
      const boxes = asked.options.map((option) => h("input", { type: "checkbox", value: option }));
      asked.options.forEach((option, i) => box.append(h("label", {}, boxes[i]!, option)));
      box.append(
        h(
          "button",
          {
            "data-testid": "answer",
            onclick: () =>
              void send({ selectedOptions: boxes.filter((b) => b.checked).map((b) => b.value) }),
          },
          "Answer",
        ),
      );
    } else {
      const input = h("input", { type: "text", placeholder: "Your answer" });
      box.append(
        input,
        h(
          "button",
          { "data-testid": "answer", onclick: () => void send({ text: input.value }) },
          "Answer",
        ),
      );
    }
    this.questions.set(asked.requestId, box);
    this.body.append(box);
  }

  private applied(requestId: string, verdict: Verdict): void {
    const target = this.questions.get(requestId);
    if (!target) {
      return;
    }
    const callId = target.dataset.callId;
    const card = callId ? this.cards.get(callId) : undefined;
    if (card) {
      card.actions.replaceChildren();
      card.setStatus(
        verdict === Verdict.DENY ? "denied" : "approved",
        verdict === Verdict.APPROVE_ALWAYS ? "always" : "",
      );
    } else {
      target.dataset.answered = "true";
      for (const control of target.querySelectorAll("button, input")) {
        (control as HTMLButtonElement).disabled = true;
      }
    }
  }

  private result(result: ToolResult): void {
    const card =
      this.cards.get(result.callId) ??
      this.card(create(ToolCallSchema, { id: result.callId, name: result.name }), "running");
    const outcome = result.outcome;
    card.setResult(
      outcome.case === "error" ? { error: outcome.value } : { output: outcome.value ?? "" },
      result.durationMs,
    );
  }

  private finish(response: AgentResponse): void {
    this.response = response;
    const stop = StopReason[response.stopReason] ?? "UNSPECIFIED";
    this.element.dataset.state = "done";
    this.element.dataset.stopReason = stop.toLowerCase();
    for (const card of this.cards.values()) {
      if (["preparing", "running", "awaiting-approval", "approved"].includes(card.current)) {
        card.actions.replaceChildren();
        card.setStatus("cancelled");
      }
    }
    const usage = response.usage;
    this.footer.replaceChildren(
      h(
        "span",
        { class: `stop ${stop.toLowerCase()}`, "data-testid": "stop-reason" },
        stop.toLowerCase().replace(/_/g, " "),
      ),
      ` · ${response.iterations} round(s)`,
      usage ? ` · ${usage.totalTokens} tokens` : "",
      response.model ? ` · ${response.model}` : "",
      response.error ? h("span", { class: "error" }, ` · ${response.error}`) : "",
    );
  }
}
