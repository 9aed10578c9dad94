"""The one exception type meant for the user: bad input named in one line, no traceback."""


class UserError(ValueError):
    """Raised for bad input (unknown config, missing dataset, wrong shapes...); CLIs print it as one line."""
