"""One line for each error Hydra raises while composing a config from the command line.

Hydra's own reports span several lines, list the search path, and for an unknown key
advise `+key=value`, which the typed options then reject anyway. These messages name the
key and the bad value and say what would be accepted, with a did-you-mean drawn from the
schema's keys or the group's options (difflib). `composition_message` returns None for
anything else, which the caller re-raises.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable

from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
UNKNOWN_KEY = (ConfigKeyError, ConfigAttributeError)  # a dict lookup, an attribute lookup
EXPECTED = {
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "String": "a string",
}


def composition_message(err: BaseException) -> str | None:
    """The one-line message for a Hydra composition error, or None for anything else."""
    if isinstance(err, OverrideParseException):
        return bad_override(err)
    if isinstance(err, MissingConfigException):
        return missing_option(err)
    # OmegaConf's error: chained from an override, the context of one from a config file
    cause = err.__cause__ or err.__context__
    in_file = re.match(r"In '([^']+)': ", str(err))
    where = f" in {in_file.group(1)}.yaml" if in_file else ""
    if isinstance(err, ConfigCompositionException) and isinstance(cause, UNKNOWN_KEY):
        return unknown_key(cause, where)
    if isinstance(err, ConfigCompositionException) and isinstance(cause, ValidationError):
        return bad_value(str(err), cause, where)
    if isinstance(err, ValueError) and str(err).startswith("Config group override must be"):
        return (
            "a config group (model=, memory=, data=, ...) takes the name of one of its "
            "options, not a number: model=small; set a key inside it with group.key=value"
        )
    if isinstance(err, HydraException | ValueError):
        return one_line(str(err))
    return None


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """`; did you mean prefix+closest?`, or the list of choices when none is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    return f"; choose one of {', '.join(prefix + c for c in choices)}" if choices else ""


def unknown_key(cause: ConfigKeyError | ConfigAttributeError, where: str = "") -> str:
    """`unknown key memory.num_tokens; did you mean memory.memory_tokens?`

    `where` names the config file the key was read from (` in experiment/x.yaml`), if any.
    """
    full_key = str(cause.full_key or cause.key)
    prefix = full_key[: -len(str(cause.key))] if cause.key is not None else ""
    schema = cause.object_type
    if dataclasses.is_dataclass(schema):
        keys: Iterable[str] = [f.name for f in dataclasses.fields(schema)]
    else:
        # an untyped node; at the top, Hydra's own node sits among the app's keys
        keys = [str(k) for k in cause.parent_node or {} if prefix or k != "hydra"]
    return f"unknown key {full_key}{where}{did_you_mean(str(cause.key), keys, prefix)}"


def bad_value(message: str, cause: ValidationError, where: str = "") -> str:
    """`memory.memory_tokens=abc: expected an integer` (`where`: as for `unknown_key`)."""
    reason = str(cause.msg).splitlines()[0]
    found = re.search(r"override (\S+=.*)$", message.splitlines()[0])
    value = re.match(r"Value '(.*?)' ", reason)
    override = found.group(1) if found else f"{cause.full_key}={value.group(1) if value else '?'}"
    converted = re.search(r"could not be converted to (\w+)", reason)
    choices = re.search(r"expected one of \[(.*)\]", reason)
    if converted:
        reason = f"expected {EXPECTED.get(converted.group(1), converted.group(1))}"
    elif "is not a valid bool" in reason:
        reason = "expected true or false"
    elif choices:
        reason = f"expected one of {choices.group(1)}"
    return f"{override}{where}: {reason}"


def missing_option(err: MissingConfigException) -> str:
    """`model=huge: no such option in model/; choose one of ...` (or did you mean ...)."""
    missing = err.missing_cfg_file or ""
    if "/" not in missing or err.options is None:
        return one_line(str(err))
    group, name = missing.rsplit("/", 1)  # the override is written group=name, with slashes
    return f"{group}={name}: no such option in {group}/{did_you_mean(name, err.options)}"


def bad_override(err: OverrideParseException) -> str:
    """`cannot parse the override 'x=[1': <Hydra's reason>; write key=value ...`"""
    reasons = [
        line.strip()
        for line in err.message.splitlines()
        if line.strip() and not line.startswith(("Error parsing override", "See "))
    ]
    reason = "; ".join(reasons)
    if "missing EQUAL" in reason:
        return f"cannot parse the override {err.override!r}: write key=value (no '=' in it)"
    return (
        f"cannot parse the override {err.override!r}: {reason}; write key=value and quote "
        f"values with brackets, commas or spaces (key='[1,2]'), see {GRAMMAR}"
    )


def one_line(message: str) -> str:
    """Hydra's message on one line, without OmegaConf's type details or the search path."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not line.startswith(("reference_type=", "object_type=", "See ")):
            kept.append(line)
    return "; ".join(kept)
