"""hf_adaopt's loggers follow transformers' verbosity, so `transformers.logging.set_verbosity_error()` quiets them too.

The modules log with `logging` (`import hf_adaopt` needs torch only), under the `hf_adaopt` logger. A filter on each
module's logger drops records below transformers' verbosity (`transformers.logging.get_verbosity()`) once transformers
is imported; before that, the `logging` defaults apply. Setting a level on the `hf_adaopt` logger still works as usual.
"""

from __future__ import annotations

import logging
import sys


class _TransformersVerbosity(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        tf_logging = sys.modules.get("transformers.utils.logging")  # not imported here: torch-only installs
        return tf_logging is None or record.levelno >= tf_logging.get_verbosity()


_FILTER = _TransformersVerbosity()


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with the filter that applies transformers' verbosity (see the module docstring)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
