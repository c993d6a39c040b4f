"""The event envelope (DESIGN.md §4): CloudEvents 1.0 attributes as `ce-*` NATS headers,
W3C `traceparent`, `Nats-Msg-Id` = event id, and a protobuf payload."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message
from opentelemetry import propagate

STREAM_PREFIX = "GOVMEDIA_"
DLQ_STREAM = "GOVMEDIA_DLQ"
DLQ_PREFIX = "govmedia.dlq"


def stream_name(service: str) -> str:
    return f"{STREAM_PREFIX}{service.upper()}"


def stream_subjects(service: str) -> list[str]:
    return [f"govmedia.{service}.>"]


@dataclass
class Event:
    """An event as a consumer sees it."""

    id: str
    type: str
    source: str
    subject: str
    time: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def parse(self, message_cls: type[Message]) -> Message:
        msg = message_cls()
        msg.ParseFromString(self.data)
        return msg

    @classmethod
    def from_headers(cls, headers: dict[str, str], data: bytes) -> "Event":
        return cls(
            id=headers.get("ce-id", ""),
            type=headers.get("ce-type", ""),
            source=headers.get("ce-source", ""),
            subject=headers.get("ce-subject", ""),
            time=headers.get("ce-time", ""),
            data=data,
            headers=headers,
        )


def envelope_headers(event_id: str, event_type: str, source: str, subject: str, at: datetime) -> dict[str, str]:
    headers = {
        "Nats-Msg-Id": event_id,
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": source,
        "ce-subject": subject,
        "ce-time": at.isoformat().replace("+00:00", "Z"),
        "ce-datacontenttype": "application/protobuf",
    }
    # The current trace context rides along so the consumer's span joins the same trace.
    propagate.inject(headers)
    return headers
