"""Reading Vyte's event listing as a stream: decoding, markers, errors, retries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bookingsync.errors import InvalidBooking, TransientError
from bookingsync.models.booking import Booking
from bookingsync.sandbox.vyte_events import build_event
from bookingsync.settings import load_settings
from bookingsync.sources.jsonstream import NotAnArray, iter_array
from bookingsync.sources.vyte import VyteClient, VyteSource, change_marker

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
HOST_EMAIL = "sam.seller@oursales.example"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


def split(body: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``body`` into chunks of the given sizes, repeated, then the rest."""
    chunks, position, index = [], 0, 0
    while position < len(body):
        size = sizes[index % len(sizes)] if sizes else len(body)
        chunks.append(body[position : position + size])
        position += size
        index += 1
    return chunks


def decode(chunks: list[bytes]) -> tuple[str, Any]:
    """Return ("array", items), ("other", value) or ("error", None)."""
    try:
        return "array", list(iter_array(chunks))
    except NotAnArray as exc:
        return "other", exc.value
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "error", None


def expected(body: bytes) -> tuple[str, Any]:
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "error", None
    return ("array", value) if isinstance(value, list) else ("other", value)


# Decoding ------------------------------------------------------------------


@given(
    items=st.lists(json_values, max_size=6),
    sizes=st.lists(st.integers(1, 40), max_size=5),
    spaced=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32-le"]),
)
def test_iter_array_matches_json_loads(
    items: list[Any], sizes: list[int], spaced: bool, encoding: str
) -> None:
    """Any array, cut anywhere, decodes to what json.loads returns."""
    text = json.dumps(items, indent=1 if spaced else None, ensure_ascii=False)
    body = text.encode(encoding)

    assert decode(split(body, sizes)) == ("array", items)


@given(
    items=st.lists(json_values, min_size=1, max_size=4),
    cut=st.integers(0, 10_000),
    insert=st.sampled_from([b"", b",", b"]", b"[", b"x", b" 1", b"\xff"]),
    sizes=st.lists(st.integers(1, 20), max_size=4),
)
def test_iter_array_rejects_what_json_loads_rejects(
    items: list[Any], cut: int, insert: bytes, sizes: list[int]
) -> None:
    """A damaged body is rejected exactly when json.loads rejects it."""
    body = json.dumps(items).encode("utf-8")
    position = cut % (len(body) + 1)
    damaged = body[:position] + insert + body[position:]
    if not damaged:
        return

    outcome = decode(split(damaged, sizes))

    assert outcome[0] == expected(damaged)[0]
    if outcome[0] != "error":
        assert outcome == expected(damaged)


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"[]", ("array", [])),
        (b" \n[ ]\n", ("array", [])),
        (b"[12.5e3]", ("array", [12500.0])),
        (b"[1,]", ("error", None)),
        (b"[1 2]", ("error", None)),
        (b"[1] [2]", ("error", None)),
        (b"[1", ("error", None)),
        (b'{"error": "x"}', ("other", {"error": "x"})),
        (b"null", ("other", None)),
        (b"  ", ("error", None)),
    ],
    ids=[
        "empty",
        "spaces",
        "number-cut-per-byte",
        "trailing-comma",
        "missing-comma",
        "extra-data",
        "unterminated",
        "object",
        "null",
        "only-whitespace",
    ],
)
def test_iter_array_cases_byte_by_byte(body: bytes, outcome: tuple[str, Any]) -> None:
    """Fed one byte at a time, each case decodes like json.loads."""
    assert decode([body[i : i + 1] for i in range(len(body))]) == outcome


# Listing through VyteSource --------------------------------------------------


class ChunkedBody(httpx.SyncByteStream):
    """A response body delivered in small pieces, like a slow network."""

    def __init__(self, body: bytes, size: int = 7) -> None:
        self.body = body
        self.size = size

    def __iter__(self) -> Iterator[bytes]:
        for position in range(0, len(self.body), self.size):
            yield self.body[position : position + self.size]


Reply = Callable[[httpx.Request], httpx.Response]


def make_source(replies: list[Reply], sleeps: list[float]) -> VyteSource:
    settings = load_settings(
        None,
        vyte_api_key="k" * 8,
        pipedrive_api_token="t" * 8,
        vyte_base_url="http://vyte.test",
    )
    pending = iter(replies)
    client = VyteClient(
        settings.vyte_base_url,
        {"Authorization": "k" * 8},
        httpx.Timeout(1.0),
        transport=httpx.MockTransport(lambda request: next(pending)(request)),
        sleep=sleeps.append,
    )
    return VyteSource(settings, client, now=lambda: NOW)


def event(title: str = "Product demo") -> dict[str, Any]:
    start = NOW + timedelta(days=2)
    return build_event(
        host_email=HOST_EMAIL,
        host_name="Sam Seller",
        host_user_id="5eecc40bb2181073ac6ff375",
        title=title,
        slots=[(start, start + timedelta(minutes=30))],
        invitees=[{"full_name": "Jane Roe", "email": "jane.roe@acme.example"}],
        now=NOW,
    )


def listing_reply(events: list[Any]) -> Reply:
    body = json.dumps(events).encode("utf-8")
    return lambda request: httpx.Response(200, stream=ChunkedBody(body))


def test_listing_known_marker_is_unchanged() -> None:
    """An event whose change marker matches is reported unchanged, not parsed."""
    known, changed = event("Known"), event("Changed")
    source = make_source([listing_reply([known, changed])], [])

    listing = source.list_bookings({known["_id"]: change_marker(known)})

    assert listing.unchanged_ids == {known["_id"]}
    assert [b.booking_id for b in listing.bookings] == [changed["_id"]]
    assert listing.complete


def test_listing_stale_marker_parses_event() -> None:
    """An event whose marker differs from the snapshot's is parsed again."""
    raw = event()
    source = make_source([listing_reply([raw])], [])

    listing = source.list_bookings({raw["_id"]: "old-marker"})

    assert listing.unchanged_ids == set()
    assert isinstance(listing.bookings[0], Booking)


def test_listing_cut_body_is_retried() -> None:
    """A body cut short is invalid JSON, so the listing is requested again."""
    body = json.dumps([event()]).encode("utf-8")
    sleeps: list[float] = []
    source = make_source(
        [
            lambda request: httpx.Response(200, stream=ChunkedBody(body[:100])),
            listing_reply([event()]),
        ],
        sleeps,
    )

    listing = source.list_bookings({})

    assert len(listing.bookings) == 1
    assert len(sleeps) == 1


def test_listing_server_error_is_retried() -> None:
    """A 503 is transient, so the listing is requested again."""
    sleeps: list[float] = []
    source = make_source(
        [lambda request: httpx.Response(503), listing_reply([event()])], sleeps
    )

    assert len(source.list_bookings({}).bookings) == 1
    assert len(sleeps) == 1


def test_listing_html_page_fails_with_snippet() -> None:
    """An HTML page with status 200 fails after the retries, quoting its start."""
    page = b"<!doctype html>\n<title>Maintenance</title>"
    replies: list[Reply] = [lambda request: httpx.Response(200, content=page)] * 4
    source = make_source(replies, [])

    with pytest.raises(TransientError) as failure:
        source.list_bookings({})

    assert "response is not valid JSON" in str(failure.value)
    assert "<!doctype html> <title>Maintenance" in str(failure.value)


@pytest.mark.parametrize(
    ("body", "type_name"),
    [(b'{"error": "nope"}', "dict"), (b"", "NoneType")],
    ids=["object", "empty"],
)
def test_listing_not_a_list_is_invalid(body: bytes, type_name: str) -> None:
    """A body that is not a JSON array stops the listing as unusable."""
    source = make_source([lambda request: httpx.Response(200, content=body)], [])

    with pytest.raises(InvalidBooking) as failure:
        source.list_bookings({})

    assert f"returned {type_name}, not a list" in str(failure.value)
