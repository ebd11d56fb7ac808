"""Log lines for people (`log_format = "text"`) or for log pipelines (`"json"`).

JSON: one object per line with `time` (RFC 3339, UTC), `level`, `logger`, `message`, and
`decision_id` and `trace_id` when the line was written while a decision was answered (read
from the context variables the decision path sets, `model.DECISION_ID` and `model.TRACE_ID`,
or given as `extra=` by the caller); an exception's traceback is in `exception`. Both formats
are configured once per process (the supervisor and each worker), uvicorn's loggers included.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from trustplane.model import DECISION_ID, TRACE_ID

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        decision_id = getattr(record, "decision_id", None) or DECISION_ID.get()
        if decision_id is not None:
            document["decision_id"] = decision_id
        trace_id = getattr(record, "trace_id", None) or TRACE_ID.get()
        if trace_id is not None:
            document["trace_id"] = trace_id
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def configure_logging(level: str, log_format: str) -> None:
    """The root logger's one handler on stderr, in `log_format`; uvicorn's loggers hand their
    lines to it (see `server/serve.py`, which gives uvicorn no logging config of its own)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
