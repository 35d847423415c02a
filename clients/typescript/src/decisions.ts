/**
 * Builders for `pilothouse.v1.Decision`, the answer to an
 * `approval_required` or `question_asked` event. Pass the result to
 * `PilothouseClient.submitDecision` or `SteerStream.decide`.
 */

import type { MessageInitShape } from "@bufbuild/protobuf";
import { type DecisionSchema, Verdict } from "./gen/pilothouse/v1/event_pb.js";

/** What a Decision may be built from (every field optional). */
export type DecisionInit = MessageInitShape<typeof DecisionSchema>;

/** Run the waiting tool call. `requestId` is the event's `requestId`. */
export function approve(requestId: string): DecisionInit {
  return { requestId, verdict: Verdict.APPROVE };
}

/** Run it, and every later call of the same tool in this session. */
export function approveAlways(requestId: string): DecisionInit {
  return { requestId, verdict: Verdict.APPROVE_ALWAYS };
}

/** Do not run it; the model reads `reason` as the tool's result. */
export function deny(requestId: string, reason = ""): DecisionInit {
  return { requestId, verdict: Verdict.DENY, reason };
}

/**
 * Answer a question: `selectedOptions` for a question with options, `text`
 * for a free-text one.
 */
export function answer(
  requestId: string,
  reply: { selectedOptions?: string[]; text?: string },
): DecisionInit {
  return {
    requestId,
    verdict: Verdict.UNSPECIFIED,
    selectedOptions: reply.selectedOptions ?? [],
    text: reply.text ?? "",
  };
}
