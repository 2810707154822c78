"""Shared command-line handling: `--config FILE`, repeated `--set key.path=value`, `--address`."""

from __future__ import annotations

import argparse
import os
import re
import sys

from pydantic import BaseModel

from kka_ray.config import ConfigError, load_config


def config_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted key, type, default, description) of every field of a config model, nested models flattened."""
    for name, field in model.model_fields.items():
        key, kind = f"{prefix}{name}", field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from config_fields(kind, f"{key}.")
            continue
        default = "(required)" if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):  # a config chosen by name (a detector): its own fields
            yield from config_fields(type(default), f"{key}.")
            continue
        shown = kind.__name__ if type(kind) is type else str(kind).replace("typing.", "").replace("kka_ray.", "")
        shown = re.sub(r"Annotated\[pydantic\.main\.BaseModel,.*?BeforeValidator\(.*?\)\]", "detector config",
                       shown)
        yield key, shown, default, field.description or ""


def config_help(model: type[BaseModel]) -> str:
    lines = ["configuration fields (in the --config file, or --set key=value):"]
    for key, kind, default, description in config_fields(model):
        shown = default if default == "(required)" else f"default {default!r}"
        lines.append(f"  {key} ({kind}; {shown})" + (f": {description}" if description else ""))
    return "\n".join(lines)


def parser(description: str, model: type[BaseModel] | None = None) -> argparse.ArgumentParser:
    """The common options; with the job's config `model`, --help also lists every field it takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=config_help(model) if model is not None else None)
    p.add_argument("--config", help="YAML file in configs/ (defaults apply to what it leaves out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set detector.epochs=20 (repeatable)")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else a local Ray)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--verbose", action="store_true", help="also Ray's own INFO lines (worker groups, checkpoints, "
                      "execution plans)")
    loud.add_argument("--quiet", action="store_true", help="warnings, errors and the final report only (no progress "
                      "lines or bars)")
    return p


def set_verbosity(args: argparse.Namespace) -> None:
    """--verbose / --quiet as environment for this process and the local Ray it starts: KKA_LOG_LEVEL for Ray's
    loggers, KKA_PROGRESS for progress bars, KKA_QUIET for the project's progress lines."""
    if getattr(args, "verbose", False):
        os.environ["KKA_LOG_LEVEL"] = "INFO"
    if getattr(args, "quiet", False):
        os.environ.update(KKA_LOG_LEVEL="ERROR", KKA_PROGRESS="0", KKA_QUIET="1")


def parse_config(model: type[BaseModel], args: argparse.Namespace):
    set_verbosity(args)
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    try:
        return load_config(model, args.config, overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
