"""What an incoming A2A message means to Pilothouse: the text of a user
message, who sent it, and the decision it carries when it answers an
approval or a question (`INPUT_REQUIRED`).

Answers, in a text part or a data part:

- an approval: the text "approve" (also "yes", "ok"), "always" (approve
  this tool for the rest of the conversation) or "deny" ("no", "reject"),
  each optionally followed by a reason; any other text denies, with the
  text as the reason (the safe reading of an unclear answer). Or a data
  part `{"verdict": "approve" | "deny" | "approve_always", "reason": ...,
  "editedArguments": {...}, "requestId": ...}`.
- a question: the text of one option (of several, comma-separated, when
  the question allows it), any other text as a free answer; or a data
  part `{"selectedOptions": [...], "text": ..., "requestId": ...}`.

`requestId` picks a pending request other than the oldest one.
"""

from __future__ import annotations

import json
from typing import Any

from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import ContentTypeNotSupportedError
from google.protobuf import json_format

from pilothouse.a2a.errors import invalid_params
from pilothouse.a2a.tasks import PendingRequest
from pilothouse.runtime.events import ApprovalRequired, Decision, QuestionAsked, Verdict

#: Default `created_by` of sessions made for A2A callers that name none.
A2A_CREATED_BY = "a2a"
_APPROVE = frozenset({"approve", "approved", "yes", "y", "ok", "okay", "allow"})
_ALWAYS = frozenset({"always", "approve_always"})
_DENY = frozenset({"deny", "denied", "no", "n", "reject", "refuse"})
_VERDICTS = {"approve": Verdict.APPROVE, "deny": Verdict.DENY, "approve_always": Verdict.APPROVE_ALWAYS,
             "always": Verdict.APPROVE_ALWAYS}


def text_of(message: pb.Message) -> str:
    """The message as one text: its text parts, data parts as JSON and
    file URLs, one per line. ContentTypeNotSupportedError for raw bytes
    (attach files by URL); InvalidParamsError when nothing is left."""
    lines: list[str] = []
    for index, part in enumerate(message.parts):
        kind = part.WhichOneof("content")
        if kind == "text":
            lines.append(part.text)
        elif kind == "data":
            lines.append(json.dumps(json_format.MessageToDict(part.data), ensure_ascii=False))
        elif kind == "url":
            label = part.filename or part.media_type or "file"
            lines.append(f"[{label}: {part.url}]")
        elif kind == "raw":
            raise ContentTypeNotSupportedError(
                f"message.parts[{index}]: raw file bytes are not supported; send text, data or a URL"
            )
    text = "\n".join(line for line in lines if line)
    if not text.strip():
        raise invalid_params("the message has no text", "message.parts")
    return text


def metadata_value(key: str, *sources: Any) -> str:
    """The first non-empty string `key` (or its snake_case spelling) in
    the protobuf Structs `sources` (message and request metadata)."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
    for struct in sources:
        for name in (key, snake):
            if name in struct.fields:
                value = struct.fields[name]
                if value.WhichOneof("kind") == "string_value" and value.string_value:
                    return value.string_value
    return ""


def decision_of(message: pb.Message, pending: dict[str, PendingRequest]) -> Decision:
    """The decision `message` gives to one of the `pending` requests
    (oldest first). InvalidParamsError when it names a request that is not
    pending or its data part does not fit the request."""
    data = _data_of(message)
    request_id = str(data.get("requestId") or data.get("request_id") or "")
    if request_id and request_id not in pending:
        raise invalid_params(f"no pending request {request_id!r}", "message.parts.data.requestId",
                             request_id=request_id)
    request = pending[request_id] if request_id else next(iter(pending.values()))
    text = " ".join(
        part.text for part in message.parts if part.WhichOneof("content") == "text"
    ).strip()
    if isinstance(request.event, ApprovalRequired):
        return _approval(request, data, text)
    return _answer(request, data, text)


def _approval(request: PendingRequest, data: dict[str, Any], text: str) -> Decision:
    edited = data.get("editedArguments", data.get("edited_arguments", ""))
    if not isinstance(edited, str):
        edited = json.dumps(edited)
    verdict_name = str(data.get("verdict", "")).lower()
    if verdict_name:
        verdict = _VERDICTS.get(verdict_name.removeprefix("verdict_"))
        if verdict is None:
            raise invalid_params("must be approve, deny or approve_always", "message.parts.data.verdict")
        return Decision(request.request_id, verdict, str(data.get("reason", "")), edited_arguments=edited)
    if not text:
        raise invalid_params('answer "approve", "always" or "deny"', "message.parts")
    first, _, rest = text.partition(" ")
    word = first.lower().strip(".,!:;")
    if word in _APPROVE:
        rest_word = rest.strip().lower().strip(".,!:;")
        verdict = Verdict.APPROVE_ALWAYS if rest_word == "always" else Verdict.APPROVE
        return Decision(request.request_id, verdict, "" if rest_word == "always" else rest.strip())
    if word in _ALWAYS:
        return Decision(request.request_id, Verdict.APPROVE_ALWAYS, rest.strip())
    if word in _DENY:
        return Decision(request.request_id, Verdict.DENY, rest.strip())
    return Decision(request.request_id, Verdict.DENY, text)


def _answer(request: PendingRequest, data: dict[str, Any], text: str) -> Decision:
    asked = request.event
    assert isinstance(asked, QuestionAsked)
    selected = data.get("selectedOptions", data.get("selected_options"))
    if selected is not None:
        if not isinstance(selected, list):
            raise invalid_params("must be a list of options", "message.parts.data.selectedOptions")
        return Decision(request.request_id, selected_options=tuple(str(s) for s in selected),
                        text=str(data.get("text", "")))
    answer = str(data.get("text", "")) or text
    if not answer:
        raise invalid_params("answer the question with text or selectedOptions", "message.parts")
    by_name = {option.lower(): option for option in asked.options}
    pieces = [p.strip().lower() for p in answer.split(",")] if asked.multi_select else [answer.lower()]
    if by_name and pieces and all(p in by_name for p in pieces):
        return Decision(request.request_id, selected_options=tuple(by_name[p] for p in pieces))
    return Decision(request.request_id, text=answer)


def _data_of(message: pb.Message) -> dict[str, Any]:
    """The first data part holding an object, as a dict ({} if none)."""
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            value = json_format.MessageToDict(part.data)
            if isinstance(value, dict):
                return value
    return {}
