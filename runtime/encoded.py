"""Files sent as base64 text: what image and audio requests carry in JSON."""

from __future__ import annotations

import base64
import binascii

from runtime.errors import InvalidInput

_URL_SAFE = str.maketrans("-_", "+/")
_NOUNS = {"image": ("the image", "an image"), "audio": ("the audio", "audio")}


def decode_base64_file(text: str, kind: str) -> bytes:
    """The bytes of a base64 `kind` file ("image" or "audio"): plain base64 (standard or URL-safe
    alphabet, whitespace and missing padding tolerated) or a `data:<kind>/...;base64,` URL.
    Anything else: `InvalidInput`."""
    subject, named = _NOUNS[kind]
    payload = text.strip()
    if payload[:5].lower() == "data:":
        header, comma, payload = payload.partition(",")
        media, *parameters = header[5:].split(";")
        if not comma or "base64" not in (p.strip().lower() for p in parameters):
            raise InvalidInput(f"a data URL must read `data:{kind}/<type>;base64,<data>`")
        if media and not media.strip().lower().startswith(f"{kind}/"):
            raise InvalidInput(f"the data URL holds {media!r}, not {named}")
    compact = "".join(payload.split()).translate(_URL_SAFE)
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{subject} is not valid base64: {exc}") from exc
    if not data:
        raise InvalidInput(f"{subject} is empty: the base64 text holds no bytes")
    return data
