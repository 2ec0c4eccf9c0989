"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """An error the user can fix; the CLI prints it as one line and exits non-zero."""
