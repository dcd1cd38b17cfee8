"""The asyncio adapter's logging: the ``txpika.aio`` logger of the standard library."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["log"]

_logger = logging.getLogger("txpika.aio")


class _Log:
    """`txpika._chanbook.Log` over `logging`: ``{name}`` fields filled from the keywords;
    ``failure`` logs the exception being handled, or the one given as ``error=``."""

    def _emit(self, level: int, format: str, kwargs: dict[str, Any], exc: Any = None) -> None:
        if _logger.isEnabledFor(level):
            try:
                text = format.format(**kwargs)
            except (KeyError, IndexError, ValueError):
                text = f"{format} {kwargs!r}"
            _logger.log(level, "%s", text, exc_info=exc)

    def info(self, format: str, **kwargs: Any) -> None:
        self._emit(logging.INFO, format, kwargs)

    def warn(self, format: str, **kwargs: Any) -> None:
        self._emit(logging.WARNING, format, kwargs)

    def failure(self, format: str, **kwargs: Any) -> None:
        self._emit(logging.ERROR, format, kwargs, kwargs.get("error") or True)


log = _Log()
