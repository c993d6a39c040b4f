"""Logs: one JSON object per line (the default) with the trace and span ids of the current
span, or readable text lines for a terminal.

LOG_FORMAT=json (default) | text. A JSON line has `time` (UTC, ISO 8601), `level`, `logger`,
`message`, `service`, `trace_id` and `span_id` (32 and 16 hex digits, present while a span
is active: REST requests, gRPC calls and event handling when tracing is on), and
`exception` (the traceback text) when one is logged. LOG_LEVEL sets the level.

Nothing secret or personal is written: messages name ids, never citizens' contact data or
credentials; database errors carry no bound parameters (the engine is created with
`hide_parameters`, govmedia_kit/db.py); httpx, which logs whole request URLs (webhook URLs
may carry tokens), is held at WARNING.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

from opentelemetry import trace

LOG_FORMAT_ENV = "LOG_FORMAT"
FORMATS = ("json", "text")


def _trace_ids() -> tuple[str, str] | None:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    return None


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = _trace_ids()
        if ids:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2026-05-01T02:03:04.567Z INFO  dispatch services.dispatch.worker [trace=… span=…] message`."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        ids = _trace_ids()
        where = f" [trace={ids[0]} span={ids[1]}]" if ids else ""
        line = f"{at.replace('+00:00', 'Z')} {record.levelname:<7} {self.service} {record.name}{where} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_format() -> str:
    value = os.environ.get(LOG_FORMAT_ENV, "json").strip().lower() or "json"
    return value if value in FORMATS else "json"


def formatter(service: str, fmt: str | None = None) -> logging.Formatter:
    return TextFormatter(service) if (fmt or log_format()) == "text" else JsonFormatter(service)


def setup_logging(level: str, service: str, fmt: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service, fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; webhook URLs may carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings as log lines too, not bare text on stderr
    if os.environ.get(LOG_FORMAT_ENV, "json").strip().lower() not in ("", *FORMATS):
        logging.getLogger(__name__).warning("%s=%r is not one of %s: using json", LOG_FORMAT_ENV,
                                            os.environ.get(LOG_FORMAT_ENV), ", ".join(FORMATS))
