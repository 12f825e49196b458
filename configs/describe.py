"""The configuration as `fedclinic run --help` shows it: groups with their options, every key
with its default value and the comment its YAML file gives it.

Built only when help is printed (ConfigHelpFormatter): composing configs/ costs Hydra's start-up,
which `fedclinic run` itself should not pay twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

# The epilog a parser passes to have the configuration appended to its help.
CONFIG_EPILOG = "<fedclinic configuration>"
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")
_MAX_VALUE = 40  # characters of a default shown before it is cut short
_KEY_COLUMN = 34  # KEY=default longer than this puts its comment on the next line
_GROUP_COLUMN = 18


class ConfigHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter that replaces the CONFIG_EPILOG epilog with describe_config()'s text
    (unwrapped); usage lines and errors never compose the configuration."""

    def _format_text(self, text: str) -> str:
        if text == CONFIG_EPILOG:
            return describe_config(width=self._width) + "\n"
        return super()._format_text(text)


def describe_config(config_dir: Path | None = None, width: int = 100) -> str:
    """The released configuration as help text: `GROUP=OPTION` lines with each group's options,
    then `KEY=DEFAULT  comment` for every key of configs.schema.ExperimentConfig.

    Defaults are those of the composed default configuration (configs/config.yaml and each group's
    default option, schema defaults for keys no YAML sets). Comments are the YAML's `# ...` after
    a key, else the comment lines right above it; a key only some options set names them.
    Raises configs.parse.ConfigError when configs/ does not compose."""
    from configs.load import CONFIG_DIR, released_experiment
    config_dir = config_dir or CONFIG_DIR
    chosen = _default_options(config_dir / "config.yaml")
    lines = ["configuration: override a key as KEY=VALUE, choose a group's option as GROUP=OPTION",
             "(the files are in configs/; README.md explains them)", "",
             "groups (GROUP=default: every option):", *_group_lines(config_dir, chosen), "",
             "keys (KEY=default):"]
    notes = _notes(config_dir, chosen)
    entries = [(f"{key}={_show(value)}", notes.get(key, "")) for key, value in _leaves(released_experiment(), "")]
    column = min(max(len(head) for head, _ in entries if len(head) <= _KEY_COLUMN) + 2, width // 2)
    for head, note in entries:
        lines += _entry(head, note, column, width)
    return "\n".join(lines)


def _group_lines(config_dir: Path, chosen: dict[str, str]) -> list[str]:
    """`  GROUP=default  option, option, ...` per configuration group."""
    from configs.overrides import GROUPS
    lines = []
    for group in GROUPS:
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        head = f"{group}={chosen.get(group, '')}"
        lines.append(f"  {head:<{_GROUP_COLUMN}}{', '.join(options)}")
    return lines


def _notes(config_dir: Path, chosen: dict[str, str]) -> dict[str, str]:
    """{dotted key: its YAML comment}, plus `[set by GROUP=option value, ...]` for a key that the
    group's default option leaves to the schema's default but other options set."""
    from configs.overrides import GROUPS
    comments = _comments(config_dir / "config.yaml", prefix="")
    set_by: dict[str, list[str]] = {}
    for group in GROUPS:
        default = config_dir / group / f"{chosen.get(group, '')}.yaml"
        comments.update(_comments(default, prefix=f"{group}."))
        for option in sorted(config_dir.glob(f"{group}/*.yaml")):
            for key, value in _top_keys(option, f"{group}.").items():
                if key not in _top_keys(default, f"{group}."):
                    set_by.setdefault(key, []).append(f"{option.stem} {_show(value)}")
            for key, text in _comments(option, prefix=f"{group}.").items():
                comments.setdefault(key, text)
    for key, options in set_by.items():
        group = key.split(".")[0]
        comments[key] = f"{comments.get(key, '')} [set by {group}={', '.join(options)}]".strip()
    return comments


def _entry(head: str, comment: str, column: int, width: int) -> list[str]:
    """`  head  comment`, the comment wrapped at `width` and indented to `column` (below a head
    longer than the column)."""
    head, indent = f"  {head}", " " * (column + 2)
    if not comment:
        return [head]
    width = max(width, column + 30)
    if len(head) >= column + 2:
        return [head, *textwrap.wrap(comment, width=width, initial_indent=indent, subsequent_indent=indent)]
    return textwrap.wrap(comment, width=width, initial_indent=head.ljust(column + 2), subsequent_indent=indent)


def _leaves(value: object, prefix: str) -> Iterator[tuple[str, object]]:
    """(dotted key, value) for every field of a dataclass, nested dataclasses walked; lists and
    mappings are one leaf each."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{prefix}{f.name}.")
    else:
        yield prefix.rstrip("."), value


def _show(value: object) -> str:
    """A default as an override would write it: null, true, [8, 16, 32]; lists of records summed up."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        names = ", ".join(str(getattr(v, "name", "?")) for v in value)
        return _cut(f"[{len(value)} entries: {names}]")
    if isinstance(value, tuple):
        return _cut(f"[{', '.join(_show(v) for v in value)}]")
    return _cut(str(value))


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 4] + "...]"


def _top_keys(path: Path, prefix: str) -> dict[str, object]:
    """{prefix + key: value} of a YAML file's top-level keys (its defaults list left out)."""
    import yaml
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return {f"{prefix}{k}": v for k, v in (raw or {}).items() if k != "defaults"}


def _default_options(config_yaml: Path) -> dict[str, str]:
    """config.yaml's `defaults:` list as {group: option}."""
    import yaml
    raw = yaml.safe_load(config_yaml.read_text(encoding="utf-8")) or {}
    chosen: dict[str, str] = {}
    for item in raw.get("defaults", []):
        if isinstance(item, dict):
            chosen.update({str(k): str(v) for k, v in item.items()})
    return chosen


def _comments(path: Path, prefix: str) -> dict[str, str]:
    """{dotted key: comment} of one YAML file: the text after `#` on a key's line, else the comment
    lines right above the key (not the file's opening comment, which describes the file)."""
    if not path.is_file():
        return {}
    found: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    above: list[str] = []
    opening = True  # still in the file's leading comment block
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if not stripped or not match:
            above, opening = [], opening and not stripped and not above
            continue
        indent, key = len(match["indent"]), match["key"]
        parents = [(i, k) for i, k in parents if i < indent]
        dotted = prefix + ".".join([*(k for _, k in parents), key])
        _, hash_, comment = match["rest"].partition(" #")
        text = comment.strip() if hash_ else ("" if opening else " ".join(above))
        if text and key != "defaults":
            found[dotted] = text
        parents.append((indent, key))
        above, opening = [], False
    return found
