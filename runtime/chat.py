"""Chat templates: the model's own Jinja template, rendered as transformers renders it."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from typing import Any

from runtime.errors import InvalidInput, Unprocessable


def _raise(message: str) -> None:
    raise InvalidInput(f"the model's chat template refused the conversation: {message}")


@cache
def _template(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def messages_of(inputs: Any) -> list[dict[str, Any]]:
    if not isinstance(inputs, list) or not inputs or not all(isinstance(m, dict) for m in inputs):
        raise InvalidInput('a conversation is a non-empty list of {"role": ..., "content": ...} messages')
    for index, message in enumerate(inputs):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), (str, list)):
            raise InvalidInput(f"message {index} needs a string `role` and a `content`")
    return inputs


def render(template: str | None, messages: list[dict[str, Any]], special: dict[str, str | None]) -> str:
    """The prompt for `messages` with the assistant's turn opened (`add_generation_prompt`)."""
    if not template:
        raise Unprocessable("this model has no chat template: send a plain string prompt instead of messages")
    return str(_template(template).render(messages=messages, add_generation_prompt=True, **special))
