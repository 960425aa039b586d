"""Exceptions gradwise raises for bad input; the CLI turns them into one-line errors (exit 2).
And the warnings it gives where it goes on (the CLI prints them as one line each)."""


class GradwiseError(Exception):
    """Base class of gradwise's own errors."""


class DataError(GradwiseError, ValueError):
    """A dataset or data file that gradwise cannot use (missing, malformed, NaN, ...)."""


class ConfigError(GradwiseError, ValueError):
    """A configuration value or file that is not allowed."""


class CheckpointError(GradwiseError, RuntimeError):
    """A checkpoint that is missing, corrupted, untrusted or does not match the run."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was passed over: an older one was used in its place."""
