"""One error family: every bad-input error of petl and the suite derives from petl.PetlError, in its branch."""

from __future__ import annotations

import pytest

import petl
from benchmarks.data import DataError
from benchmarks.launch import LaunchError
from benchmarks.predictions import PredictionsError
from benchmarks.preflight import PreflightError
from benchmarks.store import StoreError
from benchmarks.sweep import SweepError


@pytest.mark.parametrize("error, branch, builtin", [
    (petl.PetlConfigError, petl.PetlError, ValueError),
    (petl.DuplicateRegistrationError, petl.PetlConfigError, ValueError),
    (petl.WeightsError, petl.PetlError, RuntimeError),
    (petl.AdapterFileError, petl.PetlError, RuntimeError),
    (DataError, petl.PetlDataError, ValueError),
    (StoreError, petl.RecordError, RuntimeError),
    (PredictionsError, petl.RecordError, RuntimeError),
    (SweepError, petl.PetlError, ValueError),
    (PreflightError, petl.PetlError, ValueError),
    (LaunchError, petl.PetlError, ValueError),
])
def test_every_error_is_in_the_family_and_keeps_its_builtin_base(error: type, branch: type, builtin: type) -> None:
    assert issubclass(error, branch) and issubclass(error, petl.PetlError) and issubclass(error, builtin)


@pytest.mark.parametrize("error", [SweepError, PreflightError, LaunchError])
def test_suite_config_errors_are_not_caught_as_petl_config_errors(error: type) -> None:
    """The suite re-words petl's PetlConfigError with the sweep's origin; its own errors must pass through."""
    assert not issubclass(error, petl.PetlConfigError)
