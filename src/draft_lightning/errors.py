"""Errors that mean "the user asked for something we cannot do", shown as one line.

The CLI prints these without a traceback and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class ConfigError(ValueError):
    """A bad value in the configuration: the message names the value and what is allowed."""


class ModelUnavailableError(RuntimeError):
    """Weights that cannot be found locally or downloaded: the message says how to supply them."""
