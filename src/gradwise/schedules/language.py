"""A small text form of schedules, for the command line: ``"warmup:100,cosine:900"``."""

from __future__ import annotations

from gradwise.errors import ConfigError
from gradwise.schedules.base import Schedule
from gradwise.schedules.combine import Sequence
from gradwise.schedules.decay import (
    Constant,
    Cosine,
    ExponentialDecay,
    MultiStepDecay,
    StepDecay,
)
from gradwise.schedules.onecycle import OneCycle
from gradwise.schedules.warmup import Warmup

FORMS = (
    "constant",
    "constant:N[:VALUE]",
    "warmup:N[:START]",
    "cosine:N[:FINAL]",
    "onecycle:N[:PCT_START]",
    "step:SIZE[:GAMMA]",
    "multistep:M1/M2/...[:GAMMA]",
    "exp:GAMMA",
)
"""The text forms that :func:`parse` accepts, one per schedule; a comma joins several in
sequence (``"warmup:100,cosine"``)."""
_ALLOWED = "allowed forms: " + ", ".join(FORMS)


def _steps(text: str) -> int:
    value = int(text)  # ValueError for "1.5", "x"
    if value < 1:
        raise ValueError(f"{text} is not a number of steps >= 1")
    return value


# name: (fewest, most) arguments
_ARITY = {
    "constant": (0, 2),
    "warmup": (1, 2),
    "cosine": (1, 2),
    "onecycle": (1, 2),
    "step": (1, 2),
    "multistep": (1, 2),
    "exp": (1, 1),
}


def _segment(text: str, remaining: int | None = None) -> tuple[Schedule, int | None]:
    """One segment as (schedule, length), length None for a segment that runs forever.

    ``remaining``: the steps left in the run, the length of a ``cosine`` or ``onecycle`` given
    without one (``cosine`` or ``cosine::0.01``).
    """
    name, args = _name_and_args(text)
    if name not in _ARITY:
        raise ConfigError(f"unknown schedule name {name!r}")
    if remaining is not None and _until_the_end(text):
        args = [str(max(remaining, 1)), *args[1:]]
    low, high = _ARITY[name]
    if not low <= len(args) <= high:
        wanted = f"{low}" if low == high else f"{low} to {high}"
        raise ConfigError(f"{name} takes {wanted} argument(s), got {len(args)}")
    if name == "constant" and not args:
        return Constant(), None
    if name == "exp":
        return ExponentialDecay(float(args[0])), None
    rest = [float(a) for a in args[1:]]
    if name == "multistep":
        return MultiStepDecay([_steps(m) for m in args[0].split("/")], *rest), None
    n = _steps(args[0])
    if name == "step":
        return StepDecay(n, *rest), None
    if name == "constant":
        return Constant(*rest), n
    if name == "warmup":
        return Warmup(n, start=rest[0] if rest else 0.0), n
    if name == "cosine":
        return Cosine(n, *rest), n
    return OneCycle(n, *rest), n


def parse(text: str, total_steps: int | None = None) -> Schedule:
    """Build a schedule from its text form, as given to ``gradwise train --schedule`` and
    ``gradwise schedule``.

    The text is one or more segments separated by commas. Segments run one after another,
    each counting steps from its own start (a :class:`Sequence`). A segment is a name and
    colon-separated arguments::

        constant                      1, forever
        constant:N[:VALUE]            VALUE (default 1) for N steps
        warmup:N[:START]              linear from START (default 0) to 1 over N steps
        cosine:N[:FINAL]              half a cosine from 1 to FINAL (default 0) over N steps
        onecycle:N[:PCT_START]        one cycle over N steps, rising for the first PCT_START
                                      (default 0.3) of them (PyTorch's OneCycleLR shape)
        step:SIZE[:GAMMA]             x GAMMA (default 0.1) every SIZE steps, forever
        multistep:M1/M2/...[:GAMMA]   x GAMMA (default 0.1) at steps M1, M2, ..., forever
        exp:GAMMA                     GAMMA ** t, forever

    N, SIZE and the milestones are whole numbers of steps (>= 1); VALUE, START, FINAL,
    PCT_START and GAMMA are numbers in [0, 1]. A segment's length is its N; a segment with no
    length (``constant``, ``step``, ``multistep``, ``exp``) runs forever and must be the last.
    The last segment always runs on: after its N steps it holds its final value (``warmup``
    holds 1, ``cosine`` holds FINAL). Milestones count from the start of their segment. A step
    is whatever you call ``Scheduler.step()`` for: a batch or an epoch. Spaces are ignored and
    names are case-insensitive.

    Examples::

        warmup:100,cosine:900                      warm up over 100 steps, cosine to 0 over 900
        warmup:500,constant:4000,cosine:1000:0.01  warm up, hold, decay to 1% (WSD)
        step:30:0.1                                x 0.1 every 30 epochs (PyTorch's StepLR)
        warmup:5,multistep:30/60                   x 0.1 at steps 35 and 65
        onecycle:1000                              the one-cycle policy over 1000 batches

    With ``total_steps`` (the run's length, as ``gradwise train`` passes it), ``cosine`` and
    ``onecycle`` may leave N out (``warmup:100,cosine`` or ``cosine::0.01``): they then last
    until the end of the run.

    Text that is not in this form raises :class:`~gradwise.errors.ConfigError` naming the bad
    segment and listing the allowed forms. :func:`describe` writes a schedule back as text.

    Example::

        >>> parse("warmup:100,cosine:900")
        Sequence([(Warmup(100), 100), (Cosine(900), 900)])
        >>> parse("step:30:0.5")(60)
        0.25
    """
    if not isinstance(text, str):
        raise ConfigError(f"schedule text must be a string; received {text!r}")
    parts = [part.strip() for part in text.split(",")]
    segments = []
    for i, part in enumerate(parts):
        try:
            if not part:
                raise ConfigError("empty segment")
            used = sum(length or 0 for _, length in segments)
            remaining = None if total_steps is None else total_steps - used
            schedule, length = _segment(part, remaining)
        except (ValueError, TypeError) as err:  # ConfigError is a ValueError
            raise ConfigError(
                f"bad schedule segment {part!r} in {text!r}: {err}; {_ALLOWED}"
            ) from None
        if length is None and i < len(parts) - 1:
            raise ConfigError(
                f"bad schedule segment {part!r} in {text!r}: it runs forever (it has no length "
                f"N), so it must be the last segment; {_ALLOWED}"
            )
        if remaining is not None and i < len(parts) - 1 and _until_the_end(part):
            raise ConfigError(
                f"bad schedule segment {part!r} in {text!r}: without a length N it lasts until "
                f"the end of the run, so the segments after it would never run; give it a "
                f"length or make it the last segment; {_ALLOWED}"
            )
        segments.append((schedule, length))
    if len(segments) == 1:
        return segments[0][0]
    return Sequence(segments)


def _name_and_args(text: str) -> tuple[str, list[str]]:
    """A segment's name (lower case) and its arguments, as written."""
    name, *args = (part.strip() for part in text.split(":"))
    return name.lower(), args


def _until_the_end(text: str) -> bool:
    """Whether the segment ``text`` is a ``cosine`` or ``onecycle`` without its length N: with
    the run's length known, it lasts until the run's end (see :func:`parse`)."""
    name, args = _name_and_args(text)
    return name in ("cosine", "onecycle") and (not args or not args[0])


def _num(x: float) -> str:
    return repr(int(x)) if x == int(x) else repr(x)


def _text(schedule: Schedule, length: int | None) -> str:
    """``schedule`` as a text segment of ``length`` steps (None: forever)."""
    s = schedule
    if isinstance(s, Constant):
        if length is None and s.value == 1:
            return "constant"
        # the last segment runs on after its length, so any length writes a forever constant
        return f"constant:{length or 1}" + ("" if s.value == 1 else f":{_num(s.value)}")
    elif isinstance(s, Warmup) and (length is None or length >= s.steps):
        head = f"warmup:{s.steps}" + ("" if s.start == 0 else f":{_num(s.start)}")
        if length == s.steps or (length is None and s.then == Constant()):
            return head
        return head + "," + _text(s.then, None if length is None else length - s.steps)
    elif isinstance(s, Cosine) and length in (None, s.total_steps):
        return f"cosine:{s.total_steps}" + ("" if s.final == 0 else f":{_num(s.final)}")
    elif (
        isinstance(s, OneCycle)
        and length in (None, s.total_steps)
        and (s.div_factor, s.final_div_factor, s.anneal) == (25.0, 1e4, "cos")
    ):
        pct = "" if s.pct_start == 0.3 else f":{_num(s.pct_start)}"
        return f"onecycle:{s.total_steps}{pct}"
    elif isinstance(s, StepDecay) and length is None:
        return f"step:{s.step_size}" + ("" if s.gamma == 0.1 else f":{_num(s.gamma)}")
    elif isinstance(s, MultiStepDecay) and length is None:
        gamma = "" if s.gamma == 0.1 else f":{_num(s.gamma)}"
        return "multistep:" + "/".join(map(str, s.milestones)) + gamma
    elif isinstance(s, ExponentialDecay) and length is None:
        return f"exp:{_num(s.gamma)}"
    elif isinstance(s, Sequence) and length is None:
        last = len(s.segments) - 1
        return ",".join(
            _text(sub, None if i == last else n) for i, (sub, n) in enumerate(s.segments)
        )
    what = "forever" if length is None else f"for {length} steps"
    raise ConfigError(f"{schedule!r} run {what} has no text form; {_ALLOWED}")


def describe(schedule: Schedule) -> str:
    """The text form of ``schedule`` (inverse of :func:`parse`: ``parse(describe(s))`` gives the
    same multipliers as ``s``). Raises :class:`~gradwise.errors.ConfigError` for schedules the
    text cannot express (products, non-default one-cycle factors, a decay followed by more).

    Example::

        >>> describe(Warmup(100, then=Cosine(900, final=0.01)))
        'warmup:100,cosine:900:0.01'
    """
    return _text(schedule, None)
