"""Errors raised by petl: one-line, actionable messages; all derive from ``PetlError``, and the specific ones are also
ValueError (bad configuration) or RuntimeError (weights, adapter files) so generic handlers catch them too."""

from __future__ import annotations


class PetlError(Exception):
    """Base class: every error petl raises on bad input derives from it."""


class PetlConfigError(PetlError, ValueError):
    """Unknown method / option, or an option value out of range. The message lists the valid choices."""


class WeightsError(PetlError, RuntimeError):
    """Pretrained weights could not be obtained or do not fit the architecture."""


class AdapterFileError(PetlError, RuntimeError):
    """An adapter file is missing, corrupt, or does not match the model it is loaded into."""
