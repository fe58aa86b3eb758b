"""Hyperparameters declared once, as data.

A method declares its hyperparameters as a frozen dataclass whose defaults are the reference
recipe's values; each field (``hparam``) carries its command-line flag, help text and valid
range. Next to it a short table of overrides changes values for some nets, data sets, settings
or recipes, and a field may name a preset (a table of its own) that its value selects. ``resolve`` applies defaults
-> the selected presets -> the override rows (in table order) -> command-line flags and checks
every value; ``add_flags`` generates the flags from the fields, with help texts built from the
tables, so no value is ever written twice. Imports nothing from the project and no torch.
"""
import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

# -recipe: the authors' code's behaviour (the default) or each method as its paper describes it.
# Override rows may condition on it like on net, dataset or setting.
RECIPES = ("reference", "corrected")
# The forget settings, one per forget_*_main.py.
SETTINGS = ("fullclass", "subclass", "random")
# What an override row may condition on: the run's context.
CONTEXT_KEYS = ("net", "dataset", "setting", "recipe")


class InvalidValue(ValueError):
    """A hyperparameter outside its valid range (the mains turn it into a one-line error)."""


@dataclass(frozen=True)
class Range:
    """Valid values of a numeric hyperparameter: ``low``/``high`` bounds (inclusive unless the
    ``*_open`` flag is set); None means unbounded. NaN and infinities are never valid."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, v):
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return False
        return True

    def __str__(self):
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "finite"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, low_open=True)


def hparam(default, help, flag, valid=None, choices=None, presets=None):
    """A hyperparameter field: its default value, a one-line meaning, the command-line flag
    that overrides it (without the dash; None: no flag) and its valid values (a Range or
    ``choices``). ``presets`` ({name: Overrides}) makes the field's value the name of the preset
    whose rows apply (its choices are the presets' names)."""
    if presets is not None:
        choices = tuple(presets)
    return field(default=default, metadata=dict(help=help, flag=flag, valid=valid, choices=choices, presets=presets))


@dataclass(frozen=True)
class Overrides:
    """Rows of (condition, changes): a row applies when every key of its condition (one of
    CONTEXT_KEYS) equals the run's value, or is among them when given as a tuple. Later rows
    win. A condition on anything else, or on a setting or recipe that does not exist, is an
    error when the table is built (``check_rows`` also checks nets, data sets and fields)."""
    rows: tuple = ()

    def __post_init__(self):
        known = dict(setting=SETTINGS, recipe=RECIPES)
        for when, _ in self.rows:
            for key in when:
                if key not in CONTEXT_KEYS:
                    raise ValueError(f"override row {when}: a row conditions on {', '.join(CONTEXT_KEYS)}, "
                                     f"not {key!r}")
            _check_condition(when, known, "override row")

    def __add__(self, other):
        return Overrides(self.rows + other.rows)

    def applying(self, context):
        for when, changes in self.rows:
            if all(context.get(k) in _options(v) for k, v in when.items()):
                yield when, changes


def _options(value):
    return value if isinstance(value, tuple) else (value,)


def _check_condition(when, known, what):
    """Raise ValueError if a condition names a value that ``known`` ({key: values}) lacks."""
    for key, value in when.items():
        wrong = [v for v in _options(value) if key in known and v not in known[key]]
        if wrong:
            raise ValueError(f"{what} {when}: no run has {key} {wrong[0]!r}")


def by_net(table, fallback):
    """A per-net table ({net: changes}, with a row for ``fallback``) as override rows: the
    fallback net's row for every run, then each other net's own (-h prints each value once)."""
    rows = [({}, table[fallback])] + [(dict(net=k), v) for k, v in table.items() if k != fallback]
    return Overrides(tuple(rows))


def check_rows(cls, overrides, nets, datasets):
    """Raise ValueError unless every row of ``overrides`` conditions on known ``nets`` and
    ``datasets`` only, and changes fields of ``cls`` (a preset's rows alike) to valid values."""
    names = {f.name for f in dataclasses.fields(cls)}
    tables = [overrides] + [t for f in dataclasses.fields(cls) for t in (f.metadata["presets"] or {}).values()]
    known = dict(net=tuple(nets), dataset=tuple(datasets))
    for table in tables:
        for when, changes in table.rows:
            _check_condition(when, known, f"{cls.__name__} override row")
            if not changes.keys() <= names:
                raise ValueError(f"{cls.__name__} override row {when}: {sorted(changes.keys() - names)} "
                                 f"are not fields of {cls.__name__}")
            try:
                check(cls(**changes))
            except InvalidValue as e:
                raise ValueError(f"{cls.__name__} override row {when}: {e}") from None


def _type(f):
    """The flag's value type: the field's annotation (Optional[X] -> X), else its default's type."""
    t = f.type
    if isinstance(t, str):
        t = {"int": int, "float": float, "str": str, "bool": bool}.get(t.replace("Optional[", "").rstrip("]"))
    elif not isinstance(t, type):
        t = next((a for a in typing.get_args(t) if a is not type(None)), None)
    return t if isinstance(t, type) else type(f.default)


def _bool(s):
    v = str(s).lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _int_tuple(s):
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _show(v):
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def _condition(when):
    return ", ".join(f"{k} {'|'.join(v) if isinstance(v, tuple) else v}" for k, v in when.items())


def _describe(cls, overrides, name):
    """'default 0.01; 128 (net ViT)': the field's default and every preset and override row of it."""
    parts = [] if getattr(cls, name) is None else [_show(getattr(cls, name))]
    for f in dataclasses.fields(cls):
        for preset, rows in (f.metadata["presets"] or {}).items():
            for when, changes in rows.rows:
                if name in changes:
                    parts.append(f"{_show(changes[name])} ({_condition({f.metadata['flag']: preset, **when})})")
    for when, changes in overrides.rows:
        if name in changes:
            parts.append(f"{_show(changes[name])} ({_condition(when) or 'every run'})")
    return "default " + "; ".join(parts)


def add_flags(parser, cls, overrides=Overrides(), group=None, skip=()):
    """Add one flag per field of ``cls`` (default None = not given on the command line), with
    a help text made of the field's meaning, its valid values and its resolved defaults."""
    target = parser.add_argument_group(group) if group else parser
    for f in dataclasses.fields(cls):
        m = f.metadata
        if m["flag"] is None or m["flag"] in skip:
            continue
        t = _type(f)
        valid = f" ({m['valid']})" if m["valid"] else ""
        # the trailing %(default).0s prints nothing; it keeps argparse from appending "(default: None)"
        help_text = f"{m['help']}{valid}; {_describe(cls, overrides, f.name)}".replace("%", "%%") + "%(default).0s"
        kwargs = dict(default=None, help=help_text, dest=m["flag"])
        if m["choices"]:
            kwargs["choices"] = list(m["choices"])
        kwargs["type"] = _bool if t is bool else _int_tuple if t is tuple else t
        if t is bool:  # "-flag" alone means true, as a store_true flag; "-flag false" also works
            kwargs.update(nargs="?", const=True, metavar="true|false")
        target.add_argument(f"-{m['flag']}", **kwargs)


def resolve(cls, overrides=Overrides(), context=None, flags=None):
    """The run's hyperparameters: ``cls``'s defaults, the rows of each preset its fields select
    that match ``context`` (dict with net, dataset, setting, recipe), the override rows that
    match it, then every flag of ``flags`` (a dict or argparse Namespace, keyed by flag name)
    that is not None. A field with presets selects by its flag, else by the value the matching
    override rows give it, else by its default. Raises InvalidValue naming the flag."""
    context = dict(context or {})
    flags = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    given = {f.name: flags.get(f.metadata["flag"]) for f in dataclasses.fields(cls) if f.metadata["flag"]}
    given = {k: v for k, v in given.items() if v is not None}
    from_rows = {}
    for _, changes in overrides.applying(context):
        from_rows.update(changes)
    values = {}
    for f in dataclasses.fields(cls):
        presets = f.metadata["presets"]
        if presets:
            name = given.get(f.name, from_rows.get(f.name, f.default))
            if name not in presets:
                raise InvalidValue(f"-{f.metadata['flag']} must be one of {', '.join(presets)} (got {name!r})")
            for _, changes in presets[name].applying(context):
                values.update(changes)
    values.update(from_rows)
    values.update(given)
    out = cls(**values)
    check(out)
    return out


def check(instance):
    for f in dataclasses.fields(instance):
        v, m = getattr(instance, f.name), f.metadata
        if m.get("choices") and v not in m["choices"]:
            raise InvalidValue(f"-{m['flag']} must be one of {', '.join(map(str, m['choices']))} (got {v!r})")
        if m.get("valid") is not None and v is not None and not m["valid"].contains(v):
            raise InvalidValue(f"-{m['flag']} must be {m['valid']} (got {v})")


def as_record(instance):
    """The resolved values, keyed by field name, for the run's record."""
    return {} if instance is None else dataclasses.asdict(instance)
