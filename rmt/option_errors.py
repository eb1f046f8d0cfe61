"""One-line errors that name the config key, at the boundary between Hydra and the engine.

Three sources of mistakes meet here: OmegaConf (a missing value, a key the schema does
not have), the options' own checks (`check`), and the libraries (`data`, `curriculum`,
the model), which name their own parameters (`max_n_fraction=1.5 ...`) because they know
nothing of Hydra. `option_section` puts the config section in front of those names, so
the user reads `data.max_n_fraction=1.5 ...`, the key they can actually set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")


def check(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise `key=value rule` (e.g. `trainer.save_every=0 must be >= 1`) unless `ok`."""
    if not ok:
        raise ValueError(f"{key}={value!r} {rule}")


def at_least(key: str, value: float | None, low: float) -> None:
    """`value` >= `low`; None passes (a key's 'off' or 'automatic')."""
    check(value is None or value >= low, key, value, f"must be >= {low}")


def fraction(key: str, value: float, *, closed: bool = True) -> None:
    """`value` in [0, 1] (`closed=False`: [0, 1))."""
    ok = 0 <= value <= 1 and (closed or value < 1)
    check(ok, key, value, "must be in [0, 1]" if closed else "must be in [0, 1)")


def _names(keys: object) -> list[str]:
    if dataclasses.is_dataclass(keys):
        return [f.name for f in dataclasses.fields(keys)]
    return list(keys)  # type: ignore[call-overload]


def qualify(message: str, section: str, keys: Iterable[str]) -> str:
    """`message` with each parameter name in `keys` written as `section.name`.

    A name counts as a parameter where it is written `name=...`, `name[...]` or in
    backticks, where it contains an underscore (an identifier, never an English word:
    `max_bp`), or where it opens the message; a plain word (`exclude`, `path`) elsewhere
    is left as it is. Names already qualified (`data.fasta`) are left alone too.
    """
    names = sorted(set(keys), key=len, reverse=True)
    if not names:
        return message
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")(?!\w)")

    def rewrite(match: re.Match) -> str:
        name, start, end = match.group(1), match.start(), match.end()
        quoted = message[start - 1 : start] == "`" == message[end : end + 1]
        named = "_" in name or start == 0 or quoted or message[end : end + 1] in ("=", "[")
        return f"{section}.{name}" if named else name

    return pattern.sub(rewrite, message)


@contextlib.contextmanager
def option_section(section: str, keys: object) -> Iterator[None]:
    """Re-raise a library's ValueError with its parameter names as `section.name` keys.

    `keys` is the section's options dataclass (or instance, or a list of names). The
    error keeps its type (a `FastaError` stays one), only its message changes:

        with option_section("model", ModelOptions):
            EncoderConfig(**fields)   # "activation='relu'; ..." -> "model.activation='relu'; ..."
    """
    try:
        yield
    except ValueError as err:
        if err.args and isinstance(err.args[0], str):
            err.args = (qualify(err.args[0], section, _names(keys)), *err.args[1:])
        raise


def _unknown_keys(node: DictConfig, path: str) -> Iterator[str]:
    """Keys of `node` and its typed sub-nodes that their dataclass does not declare.

    Hydra's `+key=value` adds a key to a structured config and `to_object` then drops it
    without a word; this finds it first. (A task function's config has no `hydra` node:
    Hydra keeps its own apart, so launchers and sweepers never meet the schema.)
    """
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = {f.name for f in dataclasses.fields(schema)}
    for key, value in node.items_ex(resolve=False):
        full = f"{path}{key}"
        if key in fields and isinstance(value, DictConfig):
            yield from _unknown_keys(value, f"{full}.")
        elif key not in fields:
            yield f"{full} (allowed: {', '.join(sorted(fields))})"


def require(keys: Iterable[str], is_missing: Callable[[str], bool], usage: str) -> None:
    """Refuse the first of `keys` that `is_missing`, with the app's usage line: a required
    (`???`) key is what users forget most, so the error shows the command to type."""
    for key in keys:
        if is_missing(key):
            raise ValueError(f"{key} is required: {usage}")


def to_options(cfg: DictConfig, schema: type[T], schema_name: str) -> T:
    """`cfg` (composed from a YAML that lists `schema_name` first) as a `schema` object.

    OmegaConf's and the options' own errors become one-line ValueErrors naming the key.
    """
    if OmegaConf.get_type(cfg) is not schema:
        raise ValueError(
            f"the config is not typed by {schema.__name__}: list {schema_name} first in the "
            "defaults of its YAML file"
        )
    unknown = list(_unknown_keys(cfg, ""))
    if unknown:
        raise ValueError(f"unknown config key {'; '.join(unknown)}: remove it or fix its name")
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        raise ValueError(
            f"{err.full_key} is not set: give it a value ({err.full_key}=...)"
        ) from None
    except OmegaConfBaseException as err:
        reason = str(err.msg).splitlines()[0]
        raise ValueError(f"{err.full_key}: {reason}") from None
