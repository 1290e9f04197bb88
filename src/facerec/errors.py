"""The errors facerec raises for bad input: each message names the file, line or key and says what to do.

The CLI prints these as one line (no traceback) and exits with status 2; anything else is a bug.
"""

from __future__ import annotations


class FacerecError(Exception):
    """Base of the errors below: bad input, not a bug."""


class ConfigError(FacerecError, ValueError):
    """A config file or override that does not fit the schema; the message lists valid keys or the valid range."""


class DataError(FacerecError, ValueError):
    """The data on disk does not look as expected; the message names the file or line and says what to do."""


class CheckpointError(FacerecError, RuntimeError):
    """A checkpoint that is missing, corrupt, untrusted, or not a facerec checkpoint."""


class EnsembleError(FacerecError, ValueError):
    """Models that cannot be combined into one ensemble (other identities, image sizes or scorings)."""


class TrainingDiverged(FacerecError, ValueError):
    """Non-finite steps kept coming after every rollback."""
