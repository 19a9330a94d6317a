"""User-facing errors: the CLI prints these as one clear paragraph, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad params, missing data, a busy cache). The message says how."""
