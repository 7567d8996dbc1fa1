"""A short refusal for a value that is not a number, or not a finite one, where a number
goes: jsonargparse refuses `nan` for a float nested in a class's arguments
(`--model.reward.init_args.weights '[.nan]'`) or `abc` for a learning rate with several
hundred characters of union subtypes that name neither the whole key nor what is allowed."""

from __future__ import annotations

import re

EXPECTED = re.compile(r"Expected a <class '(int|float)'>")
NONFINITE = re.compile(r"(?<![\w.])-?\.?(nan|inf|infinity)(?!\w)", re.IGNORECASE)
PARSER_KEY = re.compile(r"Parser key \"([^\"]+)\"")
NESTED_ARG = re.compile(r"NestedArg\(key='([^']+)', val=(.+?)\)\s*$", re.MULTILINE)
GIVEN_VALUE = re.compile(r"(?:Got|Given) value: (.+?)\s*$", re.MULTILINE)


def not_a_number_message(message: str) -> str | None:
    """`<key>=<value>: must be a finite number` (or `an integer`, or a list of them) for
    jsonargparse's refusal of a value given where a number goes, or None when the message is
    about something else."""
    expected = set(EXPECTED.findall(message))
    keys = PARSER_KEY.findall(message)
    if not expected or not keys:
        return None
    nested = NESTED_ARG.findall(message)
    if nested:  # the last one printed is the outermost: its key is relative to the first
        inner_key, value = nested[-1]
        key = f"{keys[0]}.{inner_key}"
    else:
        given = GIVEN_VALUE.findall(message)
        if not given:
            return None
        key, value = keys[0], given[-1]
    value = value.strip().strip("'\"").replace("'", "")
    many = value.startswith("[")
    if "float" in expected:
        allowed = "finite numbers" if many else "a finite number"
    else:
        allowed = "integers" if many else "an integer"
    not_finite = " (not NaN or infinity)" if NONFINITE.search(value) else ""
    return f"{key}={value}: must be {allowed}{not_finite}"
