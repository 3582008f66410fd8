"""User-facing errors.

Every mistake a user can fix (config, data, paths, batch arithmetic) raises a `UserError`.
The CLI prints its one-line message and exits with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input. The message says what to change."""


class ConfigError(UserError):
    """A bad configuration value or key."""


class DataError(UserError):
    """A bad data file or row. The message names file, row, field, reason and the fix."""

    def __init__(self, reason: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None, fix: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        message = (", ".join(where) + ": " if where else "") + reason
        if fix:
            message += f" — fix: {fix}"
        super().__init__(message)
        self.reason, self.file, self.row, self.field, self.fix = reason, file, row, field, fix
