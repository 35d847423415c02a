"""The model providers the settings describe, behind one router: the default
provider (`PILOTHOUSE_MODEL_*`) and each `[[providers]]` entry."""

from __future__ import annotations

import os

from pilothouse.app.settings import ProviderSettings, Settings
from pilothouse.runtime.model.anthropic import (
    DEFAULT_BASE_URL as ANTHROPIC_BASE_URL,
    AnthropicChatModel,
)
from pilothouse.runtime.model.base import ChatModel
from pilothouse.runtime.model.openai import OpenAIChatModel
from pilothouse.runtime.model.router import ModelRouter

OPENAI_BASE_URL = "https://api.openai.com/v1"


class ProviderConfigError(ValueError):
    """A provider cannot be built from its settings; the message says why."""


def default_provider(settings: Settings, base_url: str) -> OpenAIChatModel:
    """The OpenAI-compatible provider of the `PILOTHOUSE_MODEL_*` settings."""
    return OpenAIChatModel(
        base_url=base_url,
        api_key=settings.model_api_key.get_secret_value() if settings.model_api_key else None,
        connect_timeout=settings.model_connect_timeout,
        read_timeout=settings.model_read_timeout,
        idle_timeout=settings.model_idle_timeout,
        max_retries=settings.model_max_retries,
        provider_name=settings.model_provider_name,
    )


def api_key_of(config: ProviderSettings) -> str | None:
    """The API key of a `[[providers]]` entry, from the environment variable
    its `api_key_env` names (None without one). Raises ProviderConfigError
    when that variable is unset or empty."""
    if not config.api_key_env:
        return None
    api_key = os.environ.get(config.api_key_env)
    if not api_key:
        raise ProviderConfigError(
            f"provider {config.name!r}: the environment variable {config.api_key_env} "
            "(its api_key_env) is not set"
        )
    return api_key


def named_provider(config: ProviderSettings, api_key: str | None) -> ChatModel:
    """The provider of one `[[providers]]` entry."""
    common = {
        "api_key": api_key,
        "connect_timeout": config.connect_timeout,
        "read_timeout": config.read_timeout,
        "idle_timeout": config.idle_timeout,
        "max_retries": config.max_retries,
        "extra_headers": dict(config.headers),
        "provider_name": config.gen_ai_provider_name or config.name,
    }
    if config.kind == "anthropic":
        return AnthropicChatModel(base_url=config.base_url or ANTHROPIC_BASE_URL, **common)
    return OpenAIChatModel(base_url=config.base_url or OPENAI_BASE_URL, **common)


def build_router(settings: Settings, default_base_url: str, default_model: str) -> ModelRouter:
    """The router over the default provider (at `default_base_url`) and
    every named one. Raises ProviderConfigError (before building any)."""
    keys = [api_key_of(config) for config in settings.providers]
    providers = {
        config.name: named_provider(config, key)
        for config, key in zip(settings.providers, keys, strict=True)
    }
    return ModelRouter(
        default_provider(settings, default_base_url), providers, default_model=default_model
    )
