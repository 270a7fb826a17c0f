"""Pure functions that turn a booking into Pipedrive field values."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bookingsync.models.booking import Booking, Invitee
from bookingsync.settings import OrganizationNaming, Settings

SUBJECT_MAX_CHARS = 255
MESSAGE_MAX_CHARS = 10_000
CANCELLED_PREFIX = "Cancelled: "
MARKER_PREFIX = "bookingsync booking id: "

# Second-level labels that sit under a country code (acme.co.uk → "Acme").
_SECOND_LEVEL_LABELS = {"co", "com", "org", "net", "ac", "gov", "edu", "ltd", "plc"}


@dataclass(frozen=True)
class RemoteIds:
    """The Pipedrive ids an activity refers to."""

    person_ids: tuple[int, ...]
    org_id: int | None
    deal_id: int | None
    owner_id: int | None


def organization_name(invitee: Invitee, settings: Settings) -> str | None:
    """Return the organization for a booker, or None when there is none.

    The booker's company wins; otherwise the email domain, unless it is a
    free-mail or ISP domain.
    """
    if invitee.company:
        return invitee.company.strip()
    domain = invitee.email.rsplit("@", 1)[1]
    if domain in settings.all_free_mail_domains:
        return None
    if settings.organization_naming is OrganizationNaming.CLEANED:
        return cleaned_domain_name(domain)
    return domain


def cleaned_domain_name(domain: str) -> str:
    """Return a readable company name from a domain (``acme.co.uk`` → ``Acme``)."""
    labels = domain.split(".")
    if labels[0] in ("www", "mail", "email") and len(labels) > 2:
        labels = labels[1:]
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL_LABELS:
        labels = labels[:-2]
    elif len(labels) >= 2:
        labels = labels[:-1]
    name = labels[-1]
    return name[:1].upper() + name[1:]


def person_name(invitee: Invitee) -> str:
    """Return the name as given, else the email's local part."""
    return invitee.name if invitee.name else invitee.email.split("@", 1)[0]


def template_values(booking: Booking, organization: str | None) -> dict[str, str]:
    booker = booking.booker
    return {
        "title": booking.title,
        "organization": organization or person_name(booker),
        "person": person_name(booker),
        "email": booker.email,
        "host": booking.host_name or booking.host_email or "",
    }


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, ending with a visible marker."""
    if len(text) <= limit:
        return text
    omitted = len(text) - limit
    marker = f"… [{omitted} characters truncated]"
    return text[: max(0, limit - len(marker))] + marker


def subject(booking: Booking, settings: Settings, organization: str | None) -> str:
    text = settings.activity_subject_template.format(
        **template_values(booking, organization)
    )
    return truncate(text, SUBJECT_MAX_CHARS)


def deal_title(booking: Booking, settings: Settings, organization: str | None) -> str:
    text = settings.deal_title_template.format(**template_values(booking, organization))
    return truncate(text, SUBJECT_MAX_CHARS)


def schedule_fields(booking: Booking) -> dict[str, Any]:
    """Return due_date, due_time and duration; Pipedrive reads times as UTC."""
    if booking.all_day:
        return {"due_date": booking.local_date, "due_time": None, "duration": None}
    minutes = int((booking.end - booking.start).total_seconds() // 60)
    # NOTE: Pipedrive's duration is HH:MM; longer slots are capped at 23:59.
    minutes = min(minutes, 23 * 60 + 59)
    return {
        "due_date": booking.start.strftime("%Y-%m-%d"),
        "due_time": booking.start.strftime("%H:%M"),
        "duration": f"{minutes // 60:02d}:{minutes % 60:02d}",
    }


def activity_fields(
    booking: Booking, ids: RemoteIds, settings: Settings, organization: str | None
) -> dict[str, Any]:
    """Return the activity body for ``booking``, as sent on create."""
    fields: dict[str, Any] = {
        "subject": subject(booking, settings, organization),
        "type": settings.activity_type,
        **schedule_fields(booking),
        "location": {"value": booking.location} if booking.location else None,
        "public_description": (
            f"Join: {booking.location_url}" if booking.location_url else None
        ),
        "note": activity_note(booking, settings),
        "participants": [
            {"person_id": person_id, "primary": index == 0}
            for index, person_id in enumerate(ids.person_ids)
        ],
        "org_id": ids.org_id,
        "deal_id": ids.deal_id,
        "owner_id": ids.owner_id,
        "busy": True,
        "done": False,
    }
    return {key: value for key, value in fields.items() if value is not None}


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Return the keys of ``new`` whose values differ from ``old``.

    A key present in ``old`` but gone from ``new`` is cleared with null.
    """
    changes = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old.keys() - new.keys():
        if key not in ("owner_id", "org_id", "deal_id"):
            changes[key] = None
    return changes


def booking_marker(booking_key: str) -> str:
    """Return the line that identifies a booking's activity in Pipedrive."""
    return f"{MARKER_PREFIX}{booking_key}"


def activity_note(booking: Booking, settings: Settings) -> str:
    """Build the internal note: message, booking details and the marker line."""
    paragraphs = []
    if booking.message:
        message = truncate(booking.message, MESSAGE_MAX_CHARS)
        paragraphs.append("<b>Message from the booker:</b><br>" + _html_lines(message))
    paragraphs.append(_details(booking, settings))
    paragraphs.append(html.escape(booking_marker(booking.key)))
    return "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)


def cancellation_note(previous_note: str, cancelled_at: datetime) -> str:
    stamp = cancelled_at.strftime("%Y-%m-%d %H:%M UTC")
    return f"{previous_note}<p>Cancelled in the scheduling tool on {stamp}.</p>"


def _details(booking: Booking, settings: Settings) -> str:
    lines = [f"Booked in {booking.source.capitalize()}: {booking.title}"]
    lines.append(f"When: {_local_time(booking)}")
    if booking.location:
        lines.append(f"Where: {booking.location}")
    if booking.host_email:
        host = booking.host_name or booking.host_email
        lines.append(f"Host: {host} <{booking.host_email}>")
    limit = settings.max_persons_per_booking
    for label, invitees in (
        ("Invitees", booking.invitees[:limit]),
        ("Also invited (not added as persons)", booking.invitees[limit:]),
    ):
        if invitees:
            lines.append(f"{label}: " + ", ".join(_invitee_text(i) for i in invitees))
    return "<br>".join(html.escape(line) for line in lines)


def _invitee_text(invitee: Invitee) -> str:
    parts = [invitee.name or "", f"<{invitee.email}>"]
    if invitee.phone:
        parts.append(invitee.phone)
    if invitee.company:
        parts.append(f"({invitee.company})")
    return " ".join(part for part in parts if part)


def _local_time(booking: Booking) -> str:
    if booking.all_day:
        return f"{booking.local_date} (all day)"
    zone = ZoneInfo(booking.timezone)
    start = booking.start.astimezone(zone)
    end = booking.end.astimezone(zone)
    return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} {booking.timezone}"


def _html_lines(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.splitlines())
