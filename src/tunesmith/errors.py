"""The one exception type that carries a user's mistake to the CLI."""


class TunesmithError(Exception):
    """A problem the user can fix: a bad file, column, label, config value or path.

    The CLI prints the message without a traceback and exits with code 2, so the
    message must say what was wrong, where, and how to fix it.
    """
