"""Argument checks shared by every public constructor.

Each check raises a ``ValueError`` (or ``TypeError`` for a wrong type) whose message names the
owner, the argument as spelled in the signature, what is allowed and the value received, e.g.::

    Adam: betas[0] must be in [0, 1); received betas[0]=1.5
"""

from __future__ import annotations

import difflib
import math
import numbers


def refuse(
    owner: str,
    name: str,
    allowed: str,
    value: object,
    exc: type[Exception] = ValueError,
    *,
    also: str | None = None,
) -> None:
    """Raise ``exc`` saying that ``owner``'s ``name`` must be ``allowed`` and what it received;
    ``also``: words to add in parentheses (e.g. the ones PyTorch's own check uses)."""
    extra = f" ({also})" if also else ""
    raise exc(f"{owner}: {name} must be {allowed}; received {name}={value!r}{extra}")


def number(owner: str, name: str, value: object) -> float:
    """``value`` as a finite real number (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        refuse(owner, name, "a real number", value, TypeError)
    if not math.isfinite(float(value)):
        refuse(owner, name, "finite", value)
    return float(value)


def at_least(owner: str, name: str, value: object, low: float, *, also: str | None = None) -> float:
    """A finite number ``>= low``."""
    v = number(owner, name, value)
    if v < low:
        refuse(owner, name, f">= {low:g}", value, also=also)
    return v


def positive(owner: str, name: str, value: object) -> float:
    """A finite number ``> 0``."""
    v = number(owner, name, value)
    if v <= 0:
        refuse(owner, name, "> 0", value)
    return v


def in_range(
    owner: str,
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    closed_high: bool = False,
    also: str | None = None,
) -> float:
    """A finite number in ``[low, high)`` (or ``[low, high]`` with ``closed_high``)."""
    v = number(owner, name, value)
    ok = low <= v <= high if closed_high else low <= v < high
    if not ok:
        bounds = f"in [{low:g}, {high:g}{']' if closed_high else ')'}"
        refuse(owner, name, bounds, value, also=also)
    return v


def integer(owner: str, name: str, value: object, low: int | None = None) -> int:
    """An ``int`` (bools refused), optionally ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        refuse(owner, name, "an integer", value, TypeError)
    if low is not None and value < low:
        refuse(owner, name, f"an integer >= {low}", value)
    return int(value)


def flag(owner: str, name: str, value: object) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        refuse(owner, name, "True or False", value, TypeError)
    return value


def choice(owner: str, name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``."""
    if value not in allowed:
        refuse(owner, name, "one of " + ", ".join(repr(a) for a in allowed), value)
    return value  # type: ignore[return-value]


def not_options(
    owner: str, given: dict, reasons: dict[str, str], takes: tuple[str, ...], reference: str
) -> None:
    """Refuse keyword arguments that ``reference`` (the class ``owner`` stands in for) lacks:
    a ``ValueError`` saying why for a gradwise option named in ``reasons`` (name -> why it is
    not approximated), a ``TypeError`` naming the arguments ``owner`` ``takes`` for any other."""
    for key, value in given.items():
        if key in reasons:
            raise ValueError(
                f"{owner}: {key} is not an option of {owner} ({reference} has none: "
                f"{reasons[key]}); received {key}={value!r}"
            )
        near = difflib.get_close_matches(key, takes, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise TypeError(
            f"{owner}: unexpected keyword argument {key}={value!r}; {owner} takes "
            f"{', '.join(takes)} ({reference}'s arguments){hint}"
        )


def not_group_options(owner: str, group: dict, reasons: dict[str, str], reference: str) -> None:
    """Refuse a param group that sets an option named in ``reasons`` to a value that would
    change the update. PyTorch keeps the keys it does not know without using them; a 0, False
    or None changes nothing and is let through (gradwise's grouping helpers write
    ``weight_decay=0``)."""
    for key, why in reasons.items():
        value = group.get(key)
        if value is not None and value is not False and value != 0:
            raise ValueError(
                f"{owner}: {key} is not an option of {owner} ({reference} has none: {why}); "
                f"received {key}={value!r} in a param group"
            )
