"""petl.describe: each option's type, default and help, read from the options dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from torch import nn

import petl
from petl import registry


@dataclass
class _ToyOptions:
    rank: int = field(default=3, metadata={"help": "rank of the toy update"})
    targets: tuple[str, ...] | None = None
    names: list[str] = field(default_factory=lambda: ["a"])


@pytest.fixture
def toy_method():
    @petl.register_method("toy_describe", _ToyOptions)
    def toy_describe(model: nn.Module, options: _ToyOptions) -> None:
        """A toy method for describe."""
    try:
        yield "toy_describe"
    finally:
        registry._METHODS.pop("toy_describe", None)


def test_describe_shows_type_default_and_help(toy_method: str) -> None:
    lines = petl.describe(toy_method).splitlines()
    assert lines == ["toy_describe: A toy method for describe.",
                     "  rank: int = 3  -- rank of the toy update",
                     "  targets: tuple[str, ...] | None = None",
                     "  names: list[str] = ['a']"]


@pytest.mark.parametrize("method", petl.available_methods())
def test_every_builtin_method_describes_every_option(method: str) -> None:
    text = petl.describe(method)
    fields = dataclasses.fields(petl.get_method(method).options)
    assert len(text.splitlines()) == 1 + max(len(fields), 1)
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert f"  {f.name}: " in text and f"= {default!r}" in text


def test_describe_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(petl.PetlConfigError, match="lora_c"):
        petl.describe("no_such_method")
