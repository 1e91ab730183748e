"""Every configuration section and parameter, and strict loading of YAML recipes.

A recipe is a YAML file whose top-level keys are the sections below. A recipe may start
with ``extends: other.yaml`` (a path relative to the recipe) and then states only what
differs. Evaluation settings (sections ``linear`` and ``semi``) are the fixed rules of the
benchmark: they come from a protocol file, ``rules/protocols/<eval.protocol>.yaml``, and a
recipe may not set them; to change them, a recipe names another protocol.

fastargs declares the parameters (type, help, range); the checks here are stricter than
fastargs' own: an unknown section or key, a value of the wrong type (``1.5`` for an int,
``"yes please"`` for a bool) or out of range raises :class:`ConfigError` naming the file,
the key and what is allowed, before any work starts.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fastargs import Config as FastargsConfig
from fastargs import Param, Section
from fastargs.validation import And, Checker, InRange, OneOf

from ffcv_bt.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = REPO_ROOT / "rules"
PROTOCOL_SECTIONS = ("linear", "semi", "knn")

DECLARED = FastargsConfig()


def _section(name: str, desc: str, **params: Param) -> None:
    Section(name, desc, config_descriptor=DECLARED).params(**params)


def _p(kind: type, desc: str, check: Checker | None = None) -> Param:
    """A parameter without a default: rules/base.yaml (and the protocol files) state every
    value once; a recipe that does not extend base.yaml must set them all."""
    checker = And(kind, check) if check is not None else kind
    param = Param(checker, desc, required=True)
    param.kind = kind  # the strict type we enforce before fastargs' lenient checker
    return param


def _prob(desc: str) -> Param:
    return _p(float, desc, InRange(0.0, 1.0))


_section(
    "data", "The dataset written by write_dataset.py and how to read it",
    dir=_p(str, "folder with train.beton, val.beton, manifest.json and the label subsets"),
    num_workers=_p(int, "FFCV loader worker threads per process", InRange(1, 256)),
    in_memory=_p(bool, "read the .beton into RAM (True) or page it from disk (False)"),
    order=_p(str, "sample order of training loaders", OneOf(["random", "quasi_random"])),
)
_section(
    "resolution", "Progressive training resolution (FFCV ImageNet schedule)",
    min_res=_p(int, "crop size until start_ramp", InRange(8, 1024)),
    max_res=_p(int, "crop size from end_ramp on", InRange(8, 1024)),
    start_ramp=_p(int, "last epoch at min_res", InRange(0, 100000)),
    end_ramp=_p(int, "first epoch at max_res", InRange(0, 100000)),
)
_section(
    "aug", "Barlow Twins augmentations (two asymmetric views)",
    scale_min=_p(float, "random-resized-crop smallest area fraction", InRange(0.001, 1.0)),
    scale_max=_p(float, "random-resized-crop largest area fraction", InRange(0.001, 1.0)),
    flip_p=_prob("horizontal flip probability (each view)"),
    jitter_p=_prob("colour jitter probability (all four parts under one draw)"),
    brightness=_p(float, "colour jitter brightness strength", InRange(0.0, 1.0)),
    contrast=_p(float, "colour jitter contrast strength", InRange(0.0, 1.0)),
    saturation=_p(float, "colour jitter saturation strength", InRange(0.0, 1.0)),
    hue=_p(float, "colour jitter hue strength", InRange(0.0, 0.5)),
    grayscale_p=_prob("grayscale probability (each view)"),
    blur_p1=_prob("Gaussian blur probability, view 1"),
    blur_p2=_prob("Gaussian blur probability, view 2"),
    blur_sigma_min=_p(float, "blur sigma lower bound", InRange(0.01, 100.0)),
    blur_sigma_max=_p(float, "blur sigma upper bound", InRange(0.01, 100.0)),
    solarize_p1=_prob("solarize probability, view 1"),
    solarize_p2=_prob("solarize probability, view 2"),
    solarize_threshold=_p(int, "solarize pixels at or above this value", InRange(0, 256)),
)
_section(
    "model", "Backbone and projector",
    arch=_p(str, "torchvision ResNet",
            OneOf(["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])),
    width=_p(int, "channels of the first stage (64 = torchvision)", InRange(1, 1024)),
    small_stem=_p(bool, "3x3 stride-1 stem without max-pool, for 28-64 px images"),
    zero_init_residual=_p(bool, "zero the last BN of each residual block"),
    projector=_p(str, "projector layer sizes, e.g. 8192-8192-8192"),
)
_section(
    "loss", "The Barlow Twins objective",
    lambd=_p(float, "weight of the off-diagonal terms", InRange(0.0, 1.0)),
    scale_loss=_p(float, "multiplier of the loss (original runs: 0.024)", InRange(1e-6, 1e6)),
    formulation=_p(str, "cross: d x d matrix; gram: N x N Gram matrices; auto: by shape", OneOf(["auto", "cross", "gram"])),
)
_section(
    "optim", "LARS and the learning-rate schedule",
    batch_size=_p(int, "GLOBAL batch size (all ranks together)", InRange(2, 1 << 20)),
    epochs=_p(int, "pretraining epochs", InRange(1, 100000)),
    lr_weights=_p(float, "learning rate of weights, times batch/256", InRange(0.0, 100.0)),
    lr_biases=_p(float, "learning rate of biases and BN, times batch/256", InRange(0.0, 100.0)),
    weight_decay=_p(float, "weight decay (weights only)", InRange(0.0, 1.0)),
    momentum=_p(float, "LARS momentum", InRange(0.0, 1.0)),
    eta=_p(float, "LARS trust coefficient", InRange(0.0, 1.0)),
    warmup_epochs=_p(float, "linear warmup length in epochs", InRange(0.0, 100000.0)),
    final_lr_ratio=_p(float, "cosine ends at this fraction of the base rate", InRange(0.0, 1.0)),
)
_section(
    "train", "The pretraining loop",
    seed=_p(int, "seed of weights, data order and augmentations", InRange(0, 2**31 - 1)),
    precision=_p(str, "auto: bf16 on GPUs that have it, else fp16 with a GradScaler; fp32 on CPU", OneOf(["auto", "bf16", "fp16", "fp32"])),
    channels_last=_p(bool, "channels_last memory format (GPU only)"),
    compile=_p(bool, "torch.compile the model"),
    log_every=_p(int, "JSON-lines log every N steps", InRange(1, 10**9)),
    max_steps_per_epoch=_p(int, "cut epochs short (0 = full epochs); for smoke runs",
                           InRange(0, 10**9)),
    deterministic=_p(bool, "torch deterministic algorithms (CPU resume tests)"),
)
_section(
    "eval", "Which evaluation protocol and which backbones to evaluate",
    protocol=_p(str, "protocol file rules/protocols/<name>.yaml (fixed rules)"),
    control=_p(bool, "also evaluate a randomly initialised backbone (the control row)"),
)
_section(
    "linear", "Linear probe on frozen features (protocol, not recipe)",
    epochs=_p(int, "epochs", InRange(1, 10000)),
    batch_size=_p(int, "GLOBAL batch size", InRange(1, 1 << 20)),
    lr=_p(float, "classifier learning rate", InRange(0.0, 100.0)),
    weight_decay=_p(float, "weight decay", InRange(0.0, 1.0)),
    momentum=_p(float, "SGD momentum", InRange(0.0, 1.0)),
    res=_p(int, "crop size for train and val", InRange(8, 1024)),
    resize=_p(int, "val resize before the centre crop", InRange(8, 2048)),
    precision=_p(str, "frozen forward pass precision (speed path; classifier stays fp32)",
                 OneOf(["auto", "bf16", "fp16", "fp32"])),
)
_section(
    "semi", "Semi-supervised fine-tuning on 1% / 10% of labels (protocol, not recipe)",
    epochs=_p(int, "epochs", InRange(1, 10000)),
    batch_size=_p(int, "GLOBAL batch size", InRange(1, 1 << 20)),
    lr_backbone=_p(float, "backbone learning rate", InRange(0.0, 100.0)),
    lr_classifier=_p(float, "classifier learning rate", InRange(0.0, 100.0)),
    weight_decay=_p(float, "weight decay", InRange(0.0, 1.0)),
    momentum=_p(float, "SGD momentum", InRange(0.0, 1.0)),
    res=_p(int, "crop size for train and val", InRange(8, 1024)),
    resize=_p(int, "val resize before the centre crop", InRange(8, 2048)),
)
_section(
    "knn", "Weighted kNN on frozen features (protocol, not recipe; Wu et al. 2018)",
    k=_p(int, "neighbours that vote", InRange(1, 10000)),
    temperature=_p(float, "votes weigh exp(cosine / temperature)", InRange(1e-4, 100.0)),
    batch_size=_p(int, "GLOBAL batch size of the feature extraction", InRange(1, 1 << 20)),
    res=_p(int, "centre-crop size for train and val features", InRange(8, 1024)),
    resize=_p(int, "resize before the centre crop", InRange(8, 2048)),
    pixel_floor=_p(bool, "also classify raw pixels (the floor; small images only)"),
)
_section(
    "run", "What run.py does (run control: changing it keeps a run folder usable)",
    stages=_p(str, "comma-separated subset of pretrain,knn,linear,semi1,semi10"),
    seeds=_p(str, "comma-separated train.seed values, one run each (empty: train.seed only)"),
)
_section(
    "estimate", "Throughput used by `run.py --dry-run` to estimate GPU-hours",
    device=_p(str, "device the figures below were measured on"),
    n_devices=_p(int, "devices the run would use", InRange(1, 100000)),
    pretrain_images_per_s=_p(float, "two-view images/s per device (bench/train_step.py)",
                             InRange(0.0, 1e9)),
    eval_images_per_s=_p(float, "evaluation training images/s per device", InRange(0.0, 1e9)),
)
_section(
    "slurm", "SLURM submission through submitit (run.py --slurm)",
    partition=_p(str, "partition"),
    account=_p(str, "account"),
    nodes=_p(int, "nodes", InRange(1, 10000)),
    gpus_per_node=_p(int, "GPUs (= tasks) per node", InRange(1, 64)),
    cpus_per_task=_p(int, "CPU cores per task", InRange(1, 512)),
    timeout_min=_p(int, "time limit per job in minutes (the job requeues itself)",
                   InRange(1, 10**6)),
    folder=_p(str, "submitit logs folder (relative to the run folder)"),
)

ALL_STAGES = ("pretrain", "knn", "linear", "semi1", "semi10")
# Sections that say how to run, not what is computed: changing them (--stages, an estimate,
# SLURM settings) keeps a run folder usable.
RUN_CONTROL_SECTIONS = ("run", "estimate", "slurm")


@dataclass
class Recipe:
    """A resolved configuration: every parameter of every section, plus its provenance."""

    name: str
    values: dict[str, dict[str, Any]]
    files: list[str] = field(default_factory=list)
    protocol_file: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    @property
    def configuration(self) -> dict[str, dict[str, Any]]:
        """The values that determine the results: all but RUN_CONTROL_SECTIONS."""
        return {s: v for s, v in self.values.items() if s not in RUN_CONTROL_SECTIONS}

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
        listed = [int(x) for x in self["run"]["seeds"].split(",") if x.strip()]
        return listed or [self["train"]["seed"]]

    @property
    def stages(self) -> list[str]:
        return [s.strip() for s in self["run"]["stages"].split(",") if s.strip()]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "files": self.files, "protocol_file": self.protocol_file,
                "overrides": self.overrides, "values": self.values}

    def to_yaml(self) -> str:
        """The resolved values as a YAML recipe (loadable again with load_recipe)."""
        return yaml.safe_dump(self.values, sort_keys=False)


def sections() -> dict[str, dict[str, Param]]:
    """Declared sections -> {key: Param}."""
    out: dict[str, dict[str, Param]] = {}
    for path, param in DECLARED.entries.items():
        out.setdefault(path[0], {})[path[1]] = param
    return out


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
        converted = _coerce(param.kind, value)
        return param.checker.check(converted)
    except (TypeError, ValueError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ConfigError(f"{where}: bad value {value!r} for '{section}.{key}'{detail}; "
                          f"allowed: {param.checker.help()}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    return data


def _layer_files(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The ``extends`` chain of ``path``, base first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle through {', '.join(map(str, seen))}")
    data = _read_yaml(path)
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
    protocol = _read_yaml(protocol_file)
    unknown = set(protocol) - set(PROTOCOL_SECTIONS)
    if unknown:
        raise ConfigError(f"{protocol_file}: a protocol may only set {PROTOCOL_SECTIONS}, "
                          f"found {sorted(unknown)}")
    _apply(values, protocol, protocol_file, allow_protocol=True)

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
    # Hand the values to fastargs too, so @param-style code sees the same configuration.
    DECLARED.content.clear()
    DECLARED.collect(copy.deepcopy(values))
    return Recipe(name=path.stem, values=values, files=[str(f) for f, _ in chain],
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
        lines.append(f"[{section}] {DECLARED.sections[(section,)].desc}")
        for key, param in params.items():
            lines.append(f"  {section}.{key} = {base[section][key]!r}: {param.desc} "
                         f"({param.checker.help()})")
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
