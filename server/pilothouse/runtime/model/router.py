"""A `ChatModel` that picks the provider of each request by its model name.

`"provider/model"` goes to the named provider (with `model` as the model
name); `"default/model"` to the default provider. Any other name goes to
the default provider as it is, so the `org/model` names of OpenRouter, vLLM
or Ollama keep working. When named providers are configured, a name whose
first segment is neither a provider nor the default model is refused
(`check_model`): it is almost always a misspelt provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from pilothouse.errors import FailedPreconditionError
from pilothouse.runtime.model.base import (
    ChatChunk,
    ChatModel,
    ChatRequest,
    FailureCause,
    ModelError,
)

#: The name that always means the default provider.
DEFAULT_PROVIDER = "default"
_CHAT_SPAN_PREFIX = gen_ai.GenAiOperationNameValues.CHAT.value + " "


def unknown_provider(model: str, provider: str, known: list[str]) -> FailedPreconditionError:
    """FAILED_PRECONDITION (UNKNOWN_MODEL_PROVIDER) for a model naming no
    configured provider."""
    return FailedPreconditionError(
        f"model {model!r} names provider {provider!r}, which is not configured "
        f"(providers: {', '.join(known)})",
        reason="UNKNOWN_MODEL_PROVIDER",
        metadata={"model": model, "provider": provider, "providers": ",".join(known)},
    )


class ModelRouter:
    """Routes each request to `default` or to one of `providers` (by name).

    `default_model` is the default provider's model for agents that name
    none; it always belongs to the default provider, whatever it looks
    like. `provider_name` is the default provider's; within a `chat` span
    the span's `gen_ai.provider.name` and `gen_ai.request.model` are set
    to the provider and the model name actually used.
    """

    def __init__(
        self,
        default: ChatModel,
        providers: Mapping[str, ChatModel] | None = None,
        *,
        default_model: str = "",
    ) -> None:
        self.default = default
        self.providers = dict(providers or {})
        if DEFAULT_PROVIDER in self.providers:
            raise ValueError(f"a provider may not be named {DEFAULT_PROVIDER!r}")
        self.default_model = default_model
        self.provider_name = default.provider_name

    def names(self) -> list[str]:
        """The names a model may start with: `default` and each provider."""
        return [DEFAULT_PROVIDER, *self.providers]

    def resolve(self, model: str) -> tuple[ChatModel, str]:
        """The provider and the model name to send it. Raises
        FailedPreconditionError (UNKNOWN_MODEL_PROVIDER) when named
        providers exist and `model`'s first segment names none of them."""
        prefix, slash, rest = model.partition("/")
        if slash and rest:
            if prefix == DEFAULT_PROVIDER:
                return self.default, rest
            provider = self.providers.get(prefix)
            if provider is not None:
                return provider, rest
            if self.providers and model != self.default_model:
                raise unknown_provider(model, prefix, self.names())
        return self.default, model

    def check_model(self, model: str) -> None:
        """Raise FailedPreconditionError when `model` cannot be routed."""
        self.resolve(model)

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        try:
            provider, name = self.resolve(request.model)
        except FailedPreconditionError as exc:
            return _failing(
                ModelError(exc.message, cause=FailureCause.UNKNOWN_PROVIDER, provider="router")
            )
        span = trace.get_current_span()
        if span.is_recording() and getattr(span, "name", "").startswith(_CHAT_SPAN_PREFIX):
            span.set_attribute(gen_ai.GEN_AI_PROVIDER_NAME, provider.provider_name)
            span.set_attribute(gen_ai.GEN_AI_REQUEST_MODEL, name)
        if name != request.model:
            request = replace(request, model=name)
        return provider.stream(request)

    async def aclose(self) -> None:
        seen: set[int] = set()
        for model in (self.default, *self.providers.values()):
            if id(model) not in seen:
                seen.add(id(model))
                await model.aclose()


async def _failing(error: ModelError) -> AsyncIterator[ChatChunk]:
    raise error
    yield  # pragma: no cover - makes this an async generator
