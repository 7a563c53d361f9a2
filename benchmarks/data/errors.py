"""The one exception type of the data package.

``DataError`` is petl's data branch (``petl.PetlDataError``, a ``ValueError``) so callers that already treat bad input as a ``ValueError`` keep working,
while the runner can catch exactly the data problems (missing files, wrong keys, unreadable images) and print
their one-line message, which always names the problem and the fix.
"""

from __future__ import annotations

from petl.errors import PetlDataError


class DataError(PetlDataError):
    """Bad or missing dataset input; the message names the problem and how to fix it."""


class MissingDataError(DataError):
    """A dataset's files are not where the data root says; the runner adds which root was searched, how to
    choose another and what runs offline."""
