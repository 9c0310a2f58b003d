"""The one error type users see for bad input: a message naming the value and the fix, no traceback."""


class ConfigError(ValueError):
    """Raised by pre-flight validation, before any model is loaded or anything is logged."""
