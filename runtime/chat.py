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
    """The conversation with each message's content as a string. OpenAI's list of parts
    (`[{"type": "text", "text": ...}]`, what the openai client and many tools send) is accepted
    when every part is text, joined by newlines; another part type is a 422 naming it."""
    if not isinstance(inputs, list) or not inputs or not all(isinstance(m, dict) for m in inputs):
        raise InvalidInput('a conversation is a non-empty list of {"role": ..., "content": ...} messages')
    messages = []
    for index, message in enumerate(inputs):
        content = message.get("content")
        if not isinstance(message.get("role"), str) or not isinstance(content, (str, list)):
            raise InvalidInput(f"message {index} needs a string `role` and a `content`")
        if isinstance(content, list):
            content = _text_of_parts(content, index)
        messages.append({**message, "content": content})
    return messages


def _text_of_parts(parts: list[Any], index: int) -> str:
    if not parts:
        raise InvalidInput(f"message {index} has an empty `content` list")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidInput(f'message {index}: each content part is {{"type": ..., ...}}')
        if part["type"] != "text":
            raise Unprocessable(f"message {index}: content parts of type {part['type']!r} are not supported; send text")
        if not isinstance(part.get("text"), str):
            raise InvalidInput(f"message {index}: a text part needs a string `text`")
        texts.append(part["text"])
    return "\n".join(texts)


def render(template: str | None, messages: list[dict[str, Any]], special: dict[str, str | None]) -> str:
    """The prompt for `messages` with the assistant's turn opened (`add_generation_prompt`)."""
    if not template:
        raise Unprocessable("this model has no chat template: send a plain string prompt instead of messages")
    return str(_template(template).render(messages=messages, add_generation_prompt=True, **special))
