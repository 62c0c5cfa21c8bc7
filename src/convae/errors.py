"""convae's exception classes.

Every error raised on bad user input is one of these, with a message that names the
file, key, layer or shape at fault and says what would be right.
"""

from __future__ import annotations


class ConvaeError(Exception):
    """Base class of every error convae raises on purpose."""


class ConfigError(ConvaeError, ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""


class DataError(ConvaeError, ValueError):
    """A dataset spec, file or array cannot be used as images."""


class BadImageError(DataError):
    """One image file cannot be decoded (corrupt, truncated, not an image, too large)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetNotFoundError(DataError):
    """A named dataset is neither on disk nor downloadable."""


class ArchitectureError(ConvaeError, ValueError):
    """A model cannot be built for the requested input shape or settings."""


class LayerError(ConvaeError, KeyError):
    """A requested layer does not exist; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunError(ConvaeError):
    """A run directory is missing files, damaged, or does not match its config."""


class RunFormatError(RunError):
    """A run directory was written by an incompatible (newer) format version."""


class NonFiniteLossError(ConvaeError, FloatingPointError):
    """Training produced a NaN or infinite loss; no checkpoint was written over."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"non-finite loss {loss} at epoch {epoch}, step {step}; training stopped and "
            "the last good checkpoint was kept. Check the data for NaN/Inf pixels or lower the learning rate."
        )


class TrainingInterrupted(ConvaeError, KeyboardInterrupt):
    """Training was stopped by Ctrl-C after saving a resumable checkpoint."""


class WriteError(ConvaeError, OSError):
    """A file could not be written (disk full, no permission); the previous file, if any, is unchanged."""


class ExportError(ConvaeError):
    """An export could not be written, or does not reproduce convae's own features."""
