"""Command-line options from dataclass fields: every command's flags come from its settings class (TrainConfig for
training and `prepare`), with both spellings (--name, --dashed-name), the field's help text and its default."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import typer

from higgs_train.config import TrainConfig

TYPES = {"str": str, "Path": Path, "int": int, "float": float, "bool": bool, "list[str]": list[str]}


def help_for(f: dataclasses.Field) -> str:
    """The field's help, with what it declares (config._f) that the words leave out: its choices, its least value."""
    text = f.metadata["help"]
    choices = f.metadata.get("choices")
    if choices and not all(c in text for c in choices):
        text += f" One of: {', '.join(choices)}."
    if f.metadata.get("minimum") is not None and "at least" not in text:
        text += f" At least {f.metadata['minimum']}."
    return text


def param(f: dataclasses.Field, train: bool = False) -> inspect.Parameter:
    """A typer option (or argument) for one dataclass field. Training fields default to None (= not given), so
    that a YAML preset can fill them; the others carry their own default, or are required without one."""
    kind = str(f.type).replace(" | None", "")
    names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
    if kind == "bool":
        names = [f"{n}/--no-{n[2:]}" for n in names]
    kind = "str" if f.metadata.get("auto") else kind  # a number or the word auto
    annotation = TYPES.get(kind, str) | None if (train or "None" in str(f.type)) else TYPES.get(kind, str)
    required = f.default is dataclasses.MISSING
    default = None if train else (... if required else f.default)
    help_text = help_for(f).replace("[", "\\[")  # "[default: ...]" is text, not rich markup
    if f.metadata.get("argument"):
        default = typer.Argument(default, help=help_text)
    else:
        panel = {"rich_help_panel": f.metadata["group"]} if "group" in f.metadata else {}
        shown = f.default if f.default not in (None, dataclasses.MISSING) else False
        default = typer.Option(default, *names, help=help_text, show_default=str(shown) if shown else False, **panel)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def train_signature() -> inspect.Signature:
    """`(ctx, --config, one option per TrainConfig field)`: the signature of training and `prepare`."""
    preset = typer.Option(None, "--config", help="YAML preset (see configs/); flags given here win.")
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=str | None, default=preset)]
    params += [param(f, train=True) for f in dataclasses.fields(TrainConfig)]
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    return inspect.Signature([ctx, *params])


def settings_signature(classes) -> inspect.Signature:
    """One option (or argument) per field of each settings class, in order."""
    return inspect.Signature([param(f) for c in classes for f in dataclasses.fields(c)])


def settings_from(classes, values: dict) -> list:
    """One instance of each settings class, from the parsed options."""
    return [cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}) for cls in classes]


def commands(app: typer.Typer, boundary):
    """`command(NAME, *classes)`: a decorator registering its handler as command NAME of `app`, the options the
    fields of `classes`, the handler given one instance of each, inside `boundary` (errors to exit codes)."""

    def command(name: str | None, *classes):
        def register(handler):
            def run(**values) -> None:
                with boundary():
                    handler(*settings_from(classes, values))

            run.__signature__, run.__doc__ = settings_signature(classes), handler.__doc__
            app.command(name)(run)
            return handler

        return register

    return command


def training_options(boundary):
    """A decorator giving `fn(ctx, config, **flags)` one option per TrainConfig field, plus --config, inside
    `boundary`."""

    def train_options(fn):
        def run(ctx: typer.Context, config: str | None = None, **flags) -> None:
            with boundary():
                fn(ctx, config, **flags)

        run.__signature__, run.__doc__ = train_signature(), fn.__doc__
        return run

    return train_options
