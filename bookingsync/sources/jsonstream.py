"""Decode a JSON array from a byte stream, one element at a time.

Vyte lists every event of an organization in one response. Decoding that
body whole keeps the bytes, the decoded text and every parsed event in memory
at once, several times the size of the body. ``iter_array`` yields each
element as soon as its bytes have arrived, so a caller that keeps only a
summary of each element has about one element in memory at a time.

It accepts and rejects the same input as ``json.loads`` on the whole body,
although its error messages give other positions.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Characters that can continue a JSON number, such as the "5" after "12." or
# the "+3" after "1e".
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
# json.detect_encoding reads the first four bytes of the body.
_ENCODING_PROBE_BYTES = 4


class NotAnArray(ValueError):
    """The body is valid JSON, but not an array. ``value`` is the decoded body."""

    def __init__(self, value: Any) -> None:
        self.value = value
        super().__init__(f"JSON body is a {type(value).__name__}, not an array")


def iter_array(chunks: Iterable[bytes]) -> Iterator[Any]:
    """Yield the elements of the JSON array that ``chunks`` spell out.

    The encoding is detected from the first bytes, as ``json.loads`` does for
    bytes. Raises ``json.JSONDecodeError`` or ``UnicodeDecodeError`` for
    invalid input, possibly after yielding the elements before the fault, and
    ``NotAnArray`` once the whole body has been read when it contains another
    JSON value.
    """
    stream = iter(chunks)
    head = b""
    for chunk in stream:
        head += chunk
        if len(head) >= _ENCODING_PROBE_BYTES:
            break
    decoder = codecs.getincrementaldecoder(json.detect_encoding(head))("surrogatepass")

    # Whitespace may come before the opening bracket. Keep the raw bytes until
    # the first other character decides how to decode the rest.
    seen = [head]
    text = decoder.decode(head)
    while not text.lstrip(" \t\n\r"):
        more = next(stream, None)
        if more is None:
            raise _not_an_array(seen, stream)
        seen.append(more)
        text += decoder.decode(more)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if text[start] != "[":
        raise _not_an_array(seen, stream)

    scanner = _ArrayScanner(text[start + 1 :])
    yield from scanner.values(final=False)
    for chunk in stream:
        scanner.feed(decoder.decode(chunk))
        yield from scanner.values(final=False)
    scanner.feed(decoder.decode(b"", final=True))
    yield from scanner.values(final=True)


def _not_an_array(seen: list[bytes], rest: Iterator[bytes]) -> NotAnArray:
    # Decoding the joined bytes raises exactly where json.loads would.
    return NotAnArray(json.loads(b"".join([*seen, *rest])))


class _ArrayScanner:
    """The text after an array's opening bracket, consumed value by value."""

    def __init__(self, text: str) -> None:
        self.buffer = text
        self.position = 0
        self.expect_value = True
        self.first = True
        self.closed = False
        # A value that failed to decode for lack of input is tried again once
        # the buffer reaches this length, so a large value is not re-parsed for
        # every small chunk.
        self.retry_length = 0

    def feed(self, text: str) -> None:
        self.retry_length = max(0, self.retry_length - self.position)
        self.buffer = self.buffer[self.position :] + text
        self.position = 0

    def values(self, *, final: bool) -> Iterator[Any]:
        buffer = self.buffer
        while True:
            position = _skip_whitespace(buffer, self.position)
            self.position = position
            if position == len(buffer):
                break
            if self.closed:
                raise json.JSONDecodeError("Extra data", buffer, position)
            if not self.expect_value:
                self._delimiter(buffer, position)
                continue
            if self.first and buffer[position] == "]":
                self.closed = True
                self.position = position + 1
                continue
            value = self._value(buffer, position, final)
            if value is _INCOMPLETE:
                break
            yield value
        if final and not self.closed:
            raise json.JSONDecodeError("Unterminated array", buffer, self.position)

    def _delimiter(self, buffer: str, position: int) -> None:
        character = buffer[position]
        if character == ",":
            self.expect_value = True
        elif character == "]":
            self.closed = True
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", buffer, position)
        self.position = position + 1

    def _value(self, buffer: str, position: int, final: bool) -> Any:
        if not final and len(buffer) < self.retry_length:
            return _INCOMPLETE
        try:
            value, end = _DECODER.raw_decode(buffer, position)
        except json.JSONDecodeError:
            if final:
                raise
            self.retry_length = 2 * len(buffer) - position
            return _INCOMPLETE
        if not final and _may_continue(buffer, position, end):
            self.retry_length = len(buffer) + 1
            return _INCOMPLETE
        self.position = end
        self.expect_value = self.first = False
        self.retry_length = 0
        return value


def _may_continue(buffer: str, start: int, end: int) -> bool:
    """Return whether a number decoded from ``buffer`` may go on in the next chunk.

    Strings, objects, arrays and literals end with a fixed character, but a
    number cut at a chunk boundary still decodes, as ``12`` from ``12.5``.
    """
    if buffer[start] not in "-0123456789":
        return False
    return _NUMBER_TAIL.fullmatch(buffer, end) is not None


def _skip_whitespace(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


_INCOMPLETE = object()
