"""Errors a user can cause: the command lines print them as one line and exit with 2."""


class UserError(Exception):
    """Bad input (file, key, path); the message names it and says how to fix it."""

    exit_status = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step."""
