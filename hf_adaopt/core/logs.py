"""hf_adaopt's loggers: lines that name their source, at transformers' verbosity.

The modules log with `logging` (`import hf_adaopt` needs torch only), under the `hf_adaopt` logger.

* Source. transformers prints its records as ``[transformers] message`` (its library handler's formatter); ours read
  ``[hf_adaopt] message``. The handler that prints them speaks only when no other handler would take the record:
  once you configure logging (``logging.basicConfig``, a handler of your own on any logger the record passes, pytest's
  capture), your handlers print it in your format and this one stays silent, so nothing is printed twice. Records
  still propagate to the root logger, as any library's should.
* Verbosity. A filter on each module's logger drops records below transformers' verbosity
  (`transformers.logging.get_verbosity()`) once transformers is imported, so `transformers.logging.set_verbosity_error()`
  quiets hf_adaopt too; before that, the `logging` defaults apply. Setting a level on the `hf_adaopt` logger still
  works as usual.
"""

from __future__ import annotations

import logging
import sys

LIBRARY = "hf_adaopt"
FORMAT = f"[{LIBRARY}] %(message)s"  # transformers' default: "[transformers] %(message)s"


class _TransformersVerbosity(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        tf_logging = sys.modules.get("transformers.utils.logging")  # not imported here: torch-only installs
        return tf_logging is None or record.levelno >= tf_logging.get_verbosity()


class _DefaultHandler(logging.StreamHandler):
    """Prints ``[hf_adaopt] message`` to the stderr of the moment, unless another handler takes the record.

    It stands in for `logging.lastResort` (which would print the bare message): it is only the default.
    """

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    @property
    def stream(self):  # the current sys.stderr: pytest's capsys and redirect_stderr replace it
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property reads sys.stderr instead
        pass

    def handle(self, record: logging.LogRecord) -> bool:
        if _other_handler_takes(record, self):
            return False
        return super().handle(record)


def _other_handler_takes(record: logging.LogRecord, ours: logging.Handler) -> bool:
    """Whether a handler other than `ours`, on the loggers `record` propagates through, takes its level."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not ours and record.levelno >= h.level for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


_FILTER = _TransformersVerbosity()
_HANDLER = _DefaultHandler()


def _install_default_handler() -> None:
    library = logging.getLogger(LIBRARY)
    if not any(isinstance(h, _DefaultHandler) for h in library.handlers):
        library.addHandler(_HANDLER)


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with the filter that applies transformers' verbosity and, on the `hf_adaopt` logger,
    the default handler that prefixes ``[hf_adaopt]`` (see the module docstring)."""
    _install_default_handler()
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
