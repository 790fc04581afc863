"""The project's own exceptions: errors a user can cause, each naming the input and the fix.

The CLI prints these as one line without a traceback and exits non-zero.
"""


class AVLLMError(Exception):
    """Base class for errors a user can cause and fix."""


class MediaError(AVLLMError):
    """A media file that cannot be used: missing, not media, corrupt, empty or over a limit."""


class ConfigError(AVLLMError):
    """A bad preset, YAML file, flag value or checkpoint folder."""


class ModelLoadError(AVLLMError):
    """Weights that could not be found or loaded."""


class SpliceError(AVLLMError):
    """The prompt's <video> placeholders do not match the media supplied."""


class DataError(AVLLMError):
    """A dataset or benchmark file with bad records: every problem named by file:line:field, with the fix."""
