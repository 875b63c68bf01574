"""Every error lmexport raises on purpose, with the exit code the CLI gives it.

Library code raises these; only ``cli.py`` turns them into one line and an exit
code. Codes: 1 = a check ran and failed (parity, validation), 2 = usage or input
error, 130 = interrupted.
"""
from __future__ import annotations

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class LmexportError(Exception):
    """Base class. ``hint`` says what the user can do about it."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class InputError(LmexportError):
    """A path, file or option the user gave is wrong."""


class ConfigError(InputError):
    """config.json is missing, malformed or asks for something unsupported."""


class CheckpointError(InputError):
    """Tensors are missing, extra, unmapped, mis-shaped or unreadable.

    ``problems`` holds every problem found, so the user fixes them in one go.
    """

    def __init__(self, message: str, problems: list[str] | None = None, hint: str | None = None):
        self.problems = list(problems or [])
        if self.problems:
            shown = "; ".join(self.problems[:8])
            more = f"; and {len(self.problems) - 8} more" if len(self.problems) > 8 else ""
            message = f"{message}: {shown}{more}"
        super().__init__(message, hint)


class UnsafeFileError(InputError):
    """A pickle-based file was offered without the explicit opt-in flag."""


class OutputExistsError(InputError):
    """The output path exists and --overwrite was not given."""


class DiskSpaceError(InputError):
    """Not enough free space for the expected output."""


class ArtifactError(InputError):
    """An exported ONNX folder or GGUF file is missing, damaged or from another model."""


class ChatTemplateError(ArtifactError):
    """A model folder's chat template fails, is refused by the sandbox or breaks a render limit."""


class ExportError(LmexportError):
    """The exporter could not turn the model into the requested format."""

    exit_code = EXIT_CHECK_FAILED


class ValidationError(LmexportError):
    """An export was written but does not compute what PyTorch computes.

    ``failures`` lists every output that exceeded its tolerance.
    """

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, failures: list[str] | None = None, hint: str | None = None):
        self.failures = list(failures or [])
        if self.failures:
            shown = "; ".join(self.failures[:6])
            more = f"; and {len(self.failures) - 6} more" if len(self.failures) > 6 else ""
            message = f"{message}: {shown}{more}"
        super().__init__(message, hint)


class ParityError(ValidationError):
    """``lmexport parity`` found a difference beyond the tolerance preset."""


class GenerationError(InputError):
    """Generation cannot run with the given prompt or options."""


class DeviceError(InputError):
    """The requested execution device is not available."""


class NonFiniteError(ValidationError):
    """An artifact computed NaN or infinite logits: it ran, and what it computes is wrong."""
