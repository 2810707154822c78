"""Shared command-line handling: `--config FILE`, repeated `--set key.path=value`, `--address`."""

from __future__ import annotations

import argparse
import sys

from pydantic import BaseModel

from kka_ray.config import ConfigError, load_config


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file in configs/ (defaults apply to what it leaves out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set detector.epochs=20 (repeatable)")
    p.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else a local Ray)")
    return p


def parse_config(model: type[BaseModel], args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    try:
        return load_config(model, args.config, overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
