"""User-facing errors.

Anything the user can fix (a bad path, an unknown preset, a malformed record) is raised as a
:class:`LlavakitError` with a message that names the input and what is wrong. The CLI prints it as
one line and exits with status 2; real bugs still show their traceback.
"""


class LlavakitError(Exception):
    """An error caused by user input, reported as one clear line."""


class ConfigError(LlavakitError):
    """A configuration value is missing, unknown or of the wrong type."""


class DataError(LlavakitError):
    """A data file or record is malformed."""
