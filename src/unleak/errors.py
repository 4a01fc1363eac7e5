"""The one exception type unleak raises for bad input or environment.

The CLI turns an `UnleakError` into a one-line message and exit status 2
(no traceback); library users catch it like any other exception.
"""


class UnleakError(Exception):
    """A user-facing error: bad input, a missing file, an impossible setting."""
