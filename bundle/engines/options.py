"""Boolean config ids given on the command line.

`python -m monai.bundle run --resume false` passes the STRING "false" (fire parses only Python literals such as
`False`), and a non-empty string is true. Every boolean id of the bundle's configs goes through `as_bool`, which
accepts true/false, 1/0, yes/no, on/off (any case) and fails naming the id for anything else; constructor arguments
annotated `bool` are converted by the `bool_arguments` class decorator (network_def#sync_centroids false).
"""

from __future__ import annotations

import functools
import inspect

TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


class BooleanOptionError(ValueError):
    """A boolean config id holds a value that is not a boolean; the message names the id."""


def as_bool(value, name: str = "option") -> bool:
    """`value` as a bool: bools as they are, 0/1, or one of TRUE_WORDS / FALSE_WORDS (case-insensitive)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise BooleanOptionError(f"{name} must be a boolean (true/false, 1/0, yes/no), got {value!r}")


def _is_bool_annotation(annotation) -> bool:
    return annotation is bool or annotation == "bool"


def bool_arguments(cls):
    """Class decorator: the constructor arguments annotated `bool` go through as_bool (named by the argument)."""
    init = cls.__init__
    signature = inspect.signature(init)
    names = [n for n, p in signature.parameters.items() if _is_bool_annotation(p.annotation)]

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        for name in names:
            if name in bound.arguments:
                bound.arguments[name] = as_bool(bound.arguments[name], f"{cls.__name__} argument {name}")
        init(*bound.args, **bound.kwargs)

    cls.__init__ = wrapped
    return cls
