"""Every configuration section and parameter, and strict loading of YAML recipes.

A recipe is a YAML file whose top-level keys are the sections below. A recipe may start
with ``extends: other.yaml`` (a path relative to the recipe) and then states only what
differs. Evaluation settings (sections ``linear`` and ``semi``) are the fixed rules of the
benchmark: they come from a protocol file, ``rules/protocols/<eval.protocol>.yaml``, and a
recipe may not set them; to change them, a recipe names another protocol.

ffcv_bt.params declares the parameters (type, help, range), and YAML is read only here
(recipes, protocols, sweep files). An unknown section or key, a value of the wrong type
(``1.5`` for an int, ``"yes please"`` for a bool) or out of range raises
:class:`ConfigError` naming the file, the key and what is allowed, before any work starts.
A loaded :class:`Recipe` is read-only: ``recipe.optim.epochs``.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ffcv_bt.errors import ConfigError
from ffcv_bt.params import ALL_STAGES, PROTOCOL_SECTIONS, RUN_CONTROL_SECTIONS, SCHEMA, Param
from ffcv_bt.paths import REPO_ROOT, RULES_DIR  # noqa: F401 - re-exported


class Section(Mapping[str, Any]):
    """One section of a recipe, read-only: ``recipe.optim.epochs`` (or ``dict(recipe.optim)``)."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"recipe section '{self._name}' has no key '{key}'; it has "
                                 f"{', '.join(self._values)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"a recipe is read-only ({self._name}.{key}): load it with overrides")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name}, {self._values!r})"


@dataclass(frozen=True)
class Recipe:
    """A resolved, checked, read-only configuration: ``recipe.<section>.<key>`` for every
    declared parameter (typed as params.py declares it), plus its provenance."""

    name: str
    _values: dict[str, dict[str, Any]]
    files: list[str] = field(default_factory=list)
    protocol_file: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, section: str) -> Section:
        if section.startswith("_"):
            raise AttributeError(section)
        values = object.__getattribute__(self, "_values")
        if section not in values:
            raise AttributeError(f"a recipe has no section '{section}'; sections: "
                                 f"{', '.join(values)}")
        return Section(section, values[section])

    @property
    def values(self) -> dict[str, dict[str, Any]]:
        """A copy of every section's values (JSON- and YAML-ready)."""
        return copy.deepcopy(self._values)

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """The same recipe files loaded again with more ``section.key`` overrides (checked),
        under the same name."""
        return replace(load_recipe(self.files[-1], {**self.overrides, **overrides}), name=self.name)

    def named(self, name: str) -> Recipe:
        """The recipe under another name: its runs.csv ``recipe`` cell and default folder
        (run.py --name, a sweep's <sweep>.<lever>)."""
        if not name or any(c.isspace() or c in "/\\" for c in name) or name.endswith(".yaml"):
            raise ConfigError(f"--name {name!r}: no spaces, slashes or .yaml (it names runs.csv "
                              f"rows and run folders)")
        return replace(self, name=name)

    @property
    def configuration(self) -> dict[str, dict[str, Any]]:
        """The values that determine the results: all but RUN_CONTROL_SECTIONS."""
        return {s: dict(v) for s, v in self._values.items() if s not in RUN_CONTROL_SECTIONS}

    def differences(self, other: dict[str, dict[str, Any]]) -> list[str]:
        """``section.key: theirs -> ours`` for every result-determining value that differs
        from ``other`` (a saved ``values`` or ``configuration``)."""
        out = []
        for section, entries in self.configuration.items():
            for key, value in entries.items():
                theirs = other.get(section, {}).get(key, "<absent>")
                if theirs != value:
                    out.append(f"{section}.{key}: {theirs!r} -> {value!r}")
        return out

    @property
    def seeds(self) -> list[int]:
        """run.seeds as ints, or [train.seed] when it is empty."""
        listed = [int(x) for x in self.run.seeds.split(",") if x.strip()]
        return listed or [self.train.seed]

    @property
    def stages(self) -> list[str]:
        return [s.strip() for s in self.run.stages.split(",") if s.strip()]

    @property
    def evaluations(self) -> list[tuple[str, str, str]]:
        """(stage key, protocol, backbone kind) in run order; with eval.supervised the
        supervised ceiling follows each, with eval.control the random control, and for kNN
        and logreg the raw-pixel floor when the protocol asks for it."""
        out = []
        for stage in self.stages:
            if stage == "pretrain":
                continue
            out.append((stage, stage, "pretrained"))
            if self.eval.supervised:
                out.append((f"{stage}-supervised", stage, "supervised"))
            if self.eval.control:
                out.append((f"{stage}-random", stage, "random"))
            floor = {"knn": self.knn.pixel_floor, "logreg": self.logreg.pixel_floor}.get(stage)
            if floor and self.eval.control:
                out.append((f"{stage}-pixels", stage, "pixels"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "files": self.files, "protocol_file": self.protocol_file,
                "overrides": self.overrides, "values": self.values}

    def to_yaml(self) -> str:
        """The resolved values as a YAML recipe (loadable again with load_recipe)."""
        return yaml.safe_dump(self.values, sort_keys=False)


def sections() -> dict[str, dict[str, Param]]:
    """Declared sections -> {key: Param}."""
    return {name: spec.params for name, spec in SCHEMA.items()}


def _coerce(kind: type, value: Any) -> Any:
    """Strict conversion: YAML values must already have the right type; strings (from the
    command line) are parsed. Raises ValueError/TypeError otherwise."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError("expected a boolean (true/false)")
    if kind is int:
        if isinstance(value, bool):
            raise TypeError("expected an int, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError("expected an int")
    if kind is float:
        if isinstance(value, bool):
            raise TypeError("expected a float, got a boolean")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError("expected a float")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError("expected a string")
    raise TypeError(f"unsupported kind {kind}")


def check_value(section: str, key: str, value: Any, where: str) -> Any:
    """Validate one value against its declaration; return it converted."""
    declared = sections()
    if section not in declared:
        raise ConfigError(f"{where}: unknown section '{section}'. "
                          f"Allowed sections: {', '.join(sorted(declared))}")
    if key not in declared[section]:
        raise ConfigError(f"{where}: unknown key '{section}.{key}'. Allowed keys in "
                          f"'{section}': {', '.join(sorted(declared[section]))}")
    param = declared[section][key]
    try:
        return param.check(_coerce(param.kind, value))
    except (TypeError, ValueError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ConfigError(f"{where}: bad value {value!r} for '{section}.{key}'{detail}; "
                          f"allowed: {param.help()}") from None


def read_yaml(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """A YAML file that must hold a mapping (a recipe, protocol or sweep file); ConfigError
    naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file must be a mapping")
    return data


def protocol_values(name: str) -> dict[str, dict[str, Any]]:
    """The evaluation settings of ``rules/protocols/<name>.yaml``, checked."""
    path = RULES_DIR / "protocols" / f"{name}.yaml"
    data = read_yaml(path, "protocol")
    unknown = set(data) - set(PROTOCOL_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: a protocol may only set {PROTOCOL_SECTIONS}, "
                          f"found {sorted(unknown)}")
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping of keys")
    return {section: {key: check_value(section, key, value, str(path)) for key, value in entries.items()}
            for section, entries in data.items()}


def _layer_files(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The ``extends`` chain of ``path``, base first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle through {', '.join(map(str, seen))}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    chain = []
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: 'extends' must be a file name, got {parent!r}")
        chain = _layer_files(path.parent / parent, seen + (path,))
    return chain + [(path, data)]


def _apply(values: dict, data: dict, where: Path | str, allow_protocol: bool) -> None:
    for section, entries in data.items():
        if section in PROTOCOL_SECTIONS and not allow_protocol:
            raise ConfigError(
                f"{where}: section '{section}' belongs to the evaluation protocol, which a "
                f"recipe may not change; set 'eval.protocol' to another protocol file in "
                f"{RULES_DIR / 'protocols'} instead")
        if section not in sections():
            check_value(section, "", None, str(where))  # raises: unknown section
        if not isinstance(entries, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys")
        for key, value in entries.items():
            values[section][key] = check_value(section, key, value, str(where))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``['--optim.epochs=10', '--train.seed', '3']`` -> ``{'optim.epochs': '10', ...}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise ConfigError(f"command line: expected --section.key=value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: {arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe (with its ``extends`` chain and protocol file) and validate it all.

    ``overrides`` maps ``section.key`` to a value (strings are parsed), applied last.
    """
    path = Path(path)
    overrides = dict(overrides or {})
    declared = sections()
    values: dict[str, dict[str, Any]] = {s: {k: None for k in ps}
                                         for s, ps in declared.items()}
    chain = _layer_files(path)
    for file, data in chain:
        _apply(values, data, file, allow_protocol=False)

    # The protocol name may itself be overridden on the command line.
    if "eval.protocol" in overrides:
        values["eval"]["protocol"] = check_value("eval", "protocol", overrides["eval.protocol"],
                                                 "command line")
    protocol_file = RULES_DIR / "protocols" / f"{values['eval']['protocol']}.yaml"
    if not protocol_file.is_file():
        available = sorted(p.stem for p in (RULES_DIR / "protocols").glob("*.yaml"))
        raise ConfigError(f"{chain[-1][0]}: eval.protocol '{values['eval']['protocol']}' has no "
                          f"file {protocol_file}; available: {', '.join(available)}")
    for section, entries in protocol_values(values["eval"]["protocol"]).items():
        values[section].update(entries)

    for dotted, value in overrides.items():
        if "." not in dotted:
            raise ConfigError(f"command line: '{dotted}' is not section.key")
        section, key = dotted.split(".", 1)
        values[section][key] = check_value(section, key, value, "command line")

    for section, entries in values.items():
        for key, value in entries.items():
            if value is None:
                raise ConfigError(f"{path}: required key '{section}.{key}' is not set; extend "
                                  f"rules/base.yaml, which states every key "
                                  f"({declared[section][key].desc})")
    _check_consistency(values, path)
    return Recipe(name=path.stem, _values=values, files=[str(f) for f, _ in chain],
                  protocol_file=str(protocol_file), overrides=overrides)


def _check_consistency(values: dict, path: Path) -> None:
    """Checks that involve several keys."""
    r = values["resolution"]
    if r["min_res"] > r["max_res"]:
        raise ConfigError(f"{path}: resolution.min_res ({r['min_res']}) > resolution.max_res "
                          f"({r['max_res']})")
    if r["end_ramp"] < r["start_ramp"]:
        raise ConfigError(f"{path}: resolution.end_ramp ({r['end_ramp']}) < "
                          f"resolution.start_ramp ({r['start_ramp']})")
    if r["min_res"] != r["max_res"] and (r["min_res"] % r["multiple"] or r["max_res"] % r["multiple"]):
        raise ConfigError(f"{path}: a resolution ramp rounds to multiples of resolution.multiple "
                          f"({r['multiple']}); min_res ({r['min_res']}) and max_res "
                          f"({r['max_res']}) must be multiples of it")
    a = values["aug"]
    if a["scale_min"] > a["scale_max"]:
        raise ConfigError(f"{path}: aug.scale_min > aug.scale_max")
    if a["blur_sigma_min"] > a["blur_sigma_max"]:
        raise ConfigError(f"{path}: aug.blur_sigma_min > aug.blur_sigma_max")
    stages = [s.strip() for s in values["run"]["stages"].split(",") if s.strip()]
    bad = [s for s in stages if s not in ALL_STAGES]
    if bad or not stages:
        raise ConfigError(f"{path}: run.stages has {bad or 'nothing'}; allowed: "
                          f"{', '.join(ALL_STAGES)}")
    seeds = [x.strip() for x in values["run"]["seeds"].split(",") if x.strip()]
    if not all(x.isdigit() for x in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: run.seeds '{values['run']['seeds']}' is not a list of distinct "
                          f"seeds like 0,1,2")
    spec = values["model"]["projector"]
    if not all(part.isdigit() and int(part) > 0 for part in spec.split("-")):
        raise ConfigError(f"{path}: model.projector '{spec}' is not like 8192-8192-8192")


def describe() -> str:
    """Every section and parameter with its help, its value in rules/base.yaml (the
    reference recipe, with the standard protocol) and the allowed values."""
    base = load_recipe(RULES_DIR / "base.yaml")
    lines = []
    for section, params in sections().items():
        lines.append(f"[{section}] {SCHEMA[section].desc}")
        for key, param in params.items():
            lines.append(f"  {section}.{key} = {getattr(getattr(base, section), key)!r}: {param.desc} "
                         f"({param.help()})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m ffcv_bt.config [RECIPE [--section.key=value ...]]``: every key, or a
    recipe's resolved values."""
    if argv:
        print(json.dumps(load_recipe(argv[0], parse_overrides(argv[1:])).values, indent=2))
    else:
        print(describe())
    return 0


if __name__ == "__main__":
    from ffcv_bt.cli import run_command

    raise SystemExit(run_command(main))
