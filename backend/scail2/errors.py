"""Errors the engine raises for problems a user can fix.

Each message says what is wrong and what to do about it: it names the file, field, keys or shapes involved.
"""


class Scail2Error(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(Scail2Error):
    """A checkpoint file or folder is missing, truncated, or does not match the model."""


class Scail2InputError(Scail2Error, ValueError):
    """A generation input (image, video, mask, size, setting) is invalid."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class GenerationCancelled(Scail2Error):
    """Raised inside ``Scail2Pipeline.generate`` when ``should_cancel()`` returned True between steps."""
