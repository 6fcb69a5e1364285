"""The errors a user fixes, as opposed to bugs: the command line prints their message as one line, no traceback.

`UserError` (exit status 2): a config value, an input file, a workdir that holds other work. `RunStopped` (exit
status 1): a run that started and stopped for a reason its message explains (a non-finite loss, a full disk), having
kept what it made. Anything else is a bug and raises with its traceback.
"""


class UserError(Exception):
    """A problem the user must fix before the command can run; the message names the key, file or line, the value
    and what is allowed."""


class DataError(UserError, ValueError):
    """An input file or dataset that cannot be used; the message names the file (and line or key)."""


class RunStopped(Exception):
    """A run that stopped on its own terms; the message says why and what was kept."""
