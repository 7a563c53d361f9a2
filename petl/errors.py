"""Errors raised on bad input: one family, so a caller (the benchmark CLI, a notebook) catches ``PetlError`` once.

Every message is one line that names the problem and the fix. The family has one branch per kind of input:
configuration (names, options, values), data, weights, adapter files and run records. Each branch also derives
from the builtin type a generic handler expects (ValueError for bad values, RuntimeError for files that do not fit),
so code written against those keeps working. The benchmarks' own errors join the family: ``DataError`` is the
data branch, ``StoreError`` / ``PredictionsError`` the records branch; ``SweepError`` / ``PreflightError`` /
``LaunchError`` derive from ``PetlError`` and ValueError but not from ``PetlConfigError``, because the suite
catches ``PetlConfigError`` from petl to re-word it with the sweep's origin, and must not re-word its own.
"""

from __future__ import annotations


class PetlError(Exception):
    """Base class: every error petl (and the benchmark suite) raises on bad input derives from it."""


class PetlConfigError(PetlError, ValueError):
    """Unknown method / option / backbone, or an option value out of range. The message lists the valid choices."""


class DuplicateRegistrationError(PetlConfigError):
    """A name registered twice (method, backbone, activation unit, ...): the second registration would shadow the
    first silently, so it is refused everywhere with this one type."""


class PetlDataError(PetlError, ValueError):
    """A dataset is missing, unreadable or inconsistent; the message names the file or folder and the fix."""


class WeightsError(PetlError, RuntimeError):
    """Pretrained weights could not be obtained or do not fit the architecture."""


class AdapterFileError(PetlError, RuntimeError):
    """An adapter file is missing, corrupt, or does not match the model it is loaded into."""


class RecordError(PetlError, RuntimeError):
    """A run record (or a checkpoint of one) is unreadable or does not match the run it is used for."""
