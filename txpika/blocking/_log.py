"""The blocking adapter's logging: the standard library's, with the channel layer's calls.

The channel layer logs through a small interface (`txpika._chanbook.Log`) with
``twisted.logger``-style format strings; this gives it the ``txpika.blocking`` logger of
`logging`, so a script configures it as it configures any other.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["log"]


class _StdLog:
    """`txpika._chanbook.Log` over `logging`: ``{name}`` fields filled from the keywords."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, format: str, kwargs: dict[str, Any],
              exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            try:
                text = format.format(**kwargs)
            except (KeyError, IndexError, ValueError):
                text = f"{format} {kwargs!r}"
            self._logger.log(level, "%s", text, exc_info=exc_info)

    def info(self, format: str, **kwargs: Any) -> None:
        self._emit(logging.INFO, format, kwargs)

    def warn(self, format: str, **kwargs: Any) -> None:
        self._emit(logging.WARNING, format, kwargs)

    def failure(self, format: str, **kwargs: Any) -> None:
        self._emit(logging.ERROR, format, kwargs, exc_info=True)


log = _StdLog("txpika.blocking")
