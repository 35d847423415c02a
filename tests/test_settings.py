"""Settings: PILOTHOUSE_* environment over a TOML config file over the
defaults; OPENAI_* fallbacks; the agents file."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from pilothouse.app.agents_file import read_agents_file
from pilothouse.app.settings import load_settings
from pilothouse.errors import InvalidArgumentError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith(("PILOTHOUSE_", "OPENAI_")):
            monkeypatch.delenv(key)
    return monkeypatch


def test_defaults_use_the_scripted_test_model(clean_env) -> None:
    settings = load_settings()
    assert settings.uses_test_model
    assert settings.listen_address == "127.0.0.1:50051"
    assert settings.tool_executors == ["127.0.0.1:50052"]


def test_environment_over_config_file(clean_env, tmp_path: Path) -> None:
    config = tmp_path / "pilothouse.toml"
    config.write_text(
        'listen_address = "0.0.0.0:6000"\nmodel = "from-file"\ntool_timeout = 5\n'
        'tool_executors = ["tools-a:50052", "tools-b:50052"]\n'
    )
    clean_env.setenv("PILOTHOUSE_MODEL", "from-env")
    clean_env.setenv("PILOTHOUSE_MODEL_BASE_URL", "http://127.0.0.1:11434/v1")
    settings = load_settings(config)
    assert settings.listen_address == "0.0.0.0:6000"
    assert settings.model == "from-env"
    assert settings.tool_timeout == 5
    assert settings.tool_executors == ["tools-a:50052", "tools-b:50052"]
    assert not settings.uses_test_model


def test_comma_separated_executors_and_openai_fallbacks(clean_env) -> None:
    clean_env.setenv("PILOTHOUSE_TOOL_EXECUTORS", "a:1, b:2")
    clean_env.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    clean_env.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings()
    assert settings.tool_executors == ["a:1", "b:2"]
    assert settings.model_base_url == "https://api.openai.com/v1"
    assert settings.model_api_key is not None
    assert settings.model_api_key.get_secret_value() == "sk-test"
    clean_env.setenv("PILOTHOUSE_MODEL_BASE_URL", "http://vllm:8000/v1")
    assert load_settings().model_base_url == "http://vllm:8000/v1"


def test_bad_values_and_missing_file(clean_env, tmp_path: Path) -> None:
    clean_env.setenv("PILOTHOUSE_TOOL_TIMEOUT", "-1")
    with pytest.raises(pydantic.ValidationError):
        load_settings()
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_agents_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(
        '[[agents]]\nname = "a"\ntools = ["calculate"]\nmax_iterations = 3\n\n'
        '[[agents]]\nname = "b"\nthinking = true\n'
    )
    configs = read_agents_file(path)
    assert [(c.name, c.tools, c.max_iterations, c.thinking) for c in configs] == [
        ("a", ("calculate",), 3, False),
        ("b", (), 16, True),
    ]
    path.write_text('[[agents]]\nname = "a"\nmax_iterations = "many"\n')
    with pytest.raises(InvalidArgumentError, match=r"agents\[0\]\.max_iterations"):
        read_agents_file(path)
    path.write_text("[[agents]\nbroken")
    with pytest.raises(InvalidArgumentError, match=r"agents\.toml"):
        read_agents_file(path)
    assert [c.name for c in read_agents_file(None)] == ["assistant"]
