"""The shared collector of config problems: every module checks the keys it reads, and one ConfigError lists every
problem at once, one per line: `config.batch_size = -4: must be a positive integer`."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from fetalssl_jax.errors import UserError

MISSING = object()  # what `Checks.get` returns for a key the config does not have


class ConfigError(UserError, ValueError):
    """Config values no run can use; `problems` holds one line per problem, naming the key, the value and what is
    allowed."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def raise_if(problems: Sequence[str]) -> None:
    """ConfigError listing `problems`, if there are any."""
    if problems:
        raise ConfigError(problems)


class Checks:
    """Collects the problems of one config as `<prefix>.<key> = <value>: <requirement>`. A key the config does not
    have is skipped: the code's default applies, or the key's owner reports it."""

    def __init__(self, config: Any, prefix: str = "config"):
        self.config = config
        self.prefix = prefix
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        node = self.config
        for part in key.split("."):
            if not isinstance(node, Mapping) and not hasattr(node, "keys") or part not in node:
                return MISSING
            node = node[part]
        return node

    def fail(self, key: str, value: Any, requirement: str) -> None:
        self.problems.append(f"{self.prefix}.{key} = {value!r}: {requirement}")

    def _check(self, key: str, ok, requirement: str) -> None:
        value = self.get(key)
        if value is not MISSING and not ok(value):
            self.fail(key, value, requirement)

    def integer(self, key: str, minimum: int = 1, why: str = "") -> None:
        requirement = "must be a positive integer" if minimum == 1 else f"must be an integer >= {minimum}"
        self._check(key, lambda v: is_int(v) and v >= minimum, requirement + (f" ({why})" if why else ""))

    def positive_number(self, key: str) -> None:
        self._check(key, lambda v: is_number(v) and v > 0, "must be a positive number")

    def non_negative_number(self, key: str) -> None:
        self._check(key, lambda v: is_number(v) and v >= 0, "must be a number >= 0")

    def fraction(self, key: str) -> None:
        self._check(key, lambda v: is_number(v) and 0 < v <= 1, "must be a fraction in (0, 1]")

    def probability(self, key: str) -> None:
        self._check(key, lambda v: is_number(v) and 0 <= v <= 1, "must be a probability in [0, 1]")

    def below_one(self, key: str) -> None:
        """A number in [0, 1): momenta, decay rates."""
        self._check(key, lambda v: is_number(v) and 0 <= v < 1, "must be a number in [0, 1)")

    def one_of(self, key: str, allowed: Sequence[Any]) -> None:
        self._check(key, lambda v: v in allowed, f"must be one of {', '.join(map(repr, allowed))}")

    def boolean(self, key: str) -> None:
        self._check(key, lambda v: isinstance(v, bool), "must be True or False")

    def text(self, key: str, what: str) -> None:
        """A non-empty string, e.g. a path."""
        self._check(key, lambda v: isinstance(v, str) and v.strip() != "", f"must name {what} (it is empty)")

    def integers(self, key: str, minimum: int, non_empty: bool = False, distinct: bool = False, why: str = "") -> None:
        """A sequence of integers >= minimum."""

        def ok(value):
            good = isinstance(value, Sequence) and not isinstance(value, str)
            good = good and all(is_int(v) and v >= minimum for v in value)
            return good and (len(value) > 0 or not non_empty) and (len(set(value)) == len(value) or not distinct)

        what = "a non-empty sequence" if non_empty else "a sequence"
        what += " of distinct integers" if distinct else " of integers"
        self._check(key, ok, f"must be {what} >= {minimum}" + (f" ({why})" if why else ""))

    def steps_and_epochs(self, integer_epochs: bool) -> None:
        """num_steps > 0, or -1 / 0 ("train num_epochs epochs") and num_epochs > 0."""
        steps = self.get("num_steps")
        if steps is MISSING:
            return
        if not (is_int(steps) and (steps > 0 or steps in (-1, 0))):
            self.fail("num_steps", steps, "must be a positive integer, or -1 or 0 to train num_epochs epochs")
        elif steps <= 0:
            why = "num_steps <= 0 trains num_epochs epochs"
            if integer_epochs:
                self.integer("num_epochs", 1, why)
            else:
                self._check("num_epochs", lambda v: is_number(v) and v > 0, f"must be a positive number ({why})")
