"""Errors that reach the user as one line on stderr and a documented exit code.

Exit codes (design §4): 0 success, 1 a negative answer (no watermark, a failed check),
2 bad input or usage. Anything raised as a `WmError` is printed as its message alone;
anything else is a bug and is reported as such (with a traceback only under --debug).
"""


class WmError(Exception):
    """An expected failure with a one-line message for the user."""

    exit_code = 2


class BadInputError(WmError):
    """The input (file, folder, argument) cannot be used as given."""

    exit_code = 2


class MessageTooLongError(BadInputError):
    """The message does not fit in the model's payload capacity."""


class NoWatermarkError(WmError):
    """No valid payload was found (no watermark, wrong key, or destroyed mark)."""

    exit_code = 1


class CheckFailedError(WmError):
    """A quality or verification check failed (negative answer, not bad input)."""

    exit_code = 1
