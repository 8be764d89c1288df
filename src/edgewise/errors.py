"""The one exception type for problems a user can cause and fix."""


class EdgewiseError(Exception):
    """Bad input from the user: the message names the problem and what to do.

    The CLI prints it as one line and exits with code 2; anything else is a bug and raises.
    """
