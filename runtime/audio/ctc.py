"""Greedy CTC decoding as transformers' `Wav2Vec2CTCTokenizer.decode` does it, from the tokenizer's
own files (`vocab.json`, `tokenizer_config.json`), without transformers.

The frames' best ids are grouped (a run of one id is one character), the blank (the pad token) is
dropped, the word delimiter (`|`) becomes a space; special tokens other than the blank stay in the
text, as the ASR pipeline decodes CTC with `skip_special_tokens=False`. Offsets are counted in
logit frames, as the tokenizer's `char_offsets` and `word_offsets`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError
from runtime.text import clean_up_tokenization


@dataclass(frozen=True)
class Offset:
    text: str
    start: int  # first logit frame
    end: int  # one past the last


@dataclass(frozen=True)
class CtcVocabulary:
    tokens: dict[int, str]
    unknown: str
    blank: str
    word_delimiter: str
    delimiter_char: str
    lower_case: bool
    clean_up: bool

    @classmethod
    def from_directory(cls, directory: Path) -> CtcVocabulary:
        vocab_file, config_file = directory / "vocab.json", directory / "tokenizer_config.json"
        if not vocab_file.is_file():
            raise ArtifactError(f"{directory} has no vocab.json: a CTC model needs its character vocabulary")
        vocab = json.loads(vocab_file.read_text())
        if any(isinstance(value, dict) for value in vocab.values()):
            raise ArtifactError("vocab.json holds one vocabulary per language; kiln serves one-language CTC models")
        config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}
        tokens = {int(index): str(token) for token, index in vocab.items()}
        for index, added in (config.get("added_tokens_decoder") or {}).items():
            tokens.setdefault(int(index), str(added["content"]))
        return cls(
            tokens=tokens,
            unknown=_token(config.get("unk_token"), "<unk>"),
            blank=_token(config.get("pad_token"), "<pad>"),
            word_delimiter=_token(config.get("word_delimiter_token"), "|"),
            delimiter_char=str(config.get("replace_word_delimiter_char", " ")),
            lower_case=bool(config.get("do_lower_case", False)),
            clean_up=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    def decode(self, ids: list[int]) -> tuple[str, list[Offset]]:
        """The text of one sequence of frame ids, and each character's frames (blanks left out)."""
        runs = [(self.tokens.get(i, self.unknown), len(list(group))) for i, group in groupby(ids)]
        chars, start = [], 0
        for token, count in runs:
            if token != self.blank:
                char = self.delimiter_char if token == self.word_delimiter else token
                chars.append(Offset(char, start, start + count))
            start += count
        text = "".join(c.text for c in chars).strip()
        if self.lower_case:
            text = text.lower()
        if self.clean_up:
            text = clean_up_tokenization(text)
        return text, chars

    def words(self, chars: list[Offset]) -> list[Offset]:
        """Words and their frames, from the characters' (the tokenizer's `_get_word_offsets`)."""
        words: list[Offset] = []
        word, first, last, spaced = "", 0, 0, True
        for char in chars:
            space = char.text == self.delimiter_char
            if space == spaced:
                last, word = char.end, word + char.text
            elif space:
                words.append(Offset(word, first, last))
            else:
                first, last, word = char.start, char.end, char.text
            spaced = space
        if not spaced:
            words.append(Offset(word, first, last))
        return words


def _token(value: Any, default: str) -> str:
    if isinstance(value, dict):
        return str(value.get("content", default))
    return str(value) if value is not None else default
