"""What ``provq-train`` (cli.py) and ``provq-study`` (study.py) share: flags drawn from a config dataclass, and the
entry point that parses them and runs the command.

Each command declares its flags as a tuple of :class:`Option` rows over its config dataclass (``TrainConfig``,
``StudyConfig``). A row names a field: the flag is ``--field-name`` and takes the field's default and value type (the
field's type without ``None``: int, float or str), so each default is written once, in the dataclass. A bool field
that defaults to False becomes a ``--field-name`` switch; one that defaults to True, a ``--no-field-name`` switch.
The rows both commands share are defined here.
"""

from __future__ import annotations

import argparse
import logging
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from provq.edge_runtime.console import command_frame, command_parser

from .presets import PRESETS


@dataclass(frozen=True)
class Option:
    """One flag: the config field it sets, its argparse help (``%(default)s`` shows the default), its choices."""

    field: str
    help: str
    choices: tuple[str, ...] | None = None


PRESET = Option("preset", "model size (default: %(default)s)", tuple(PRESETS))
CODE_DIM = Option("code_dim", "codebook vector dimension (default: the preset's)")
CROP = Option("crop", "training crop size in pixels (default: %(default)s)")
LR = Option("lr", "peak learning rate (default: %(default)s)")
VAL_SIZE = Option("val_size", "validation centre-crop size (default: %(default)s)")
VAL_FRAMES = Option("val_frames", "at most this many validation frames, spread evenly (default: %(default)s)")
DEVICE = Option("device", "(default: %(default)s)", ("auto", "cpu", "cuda"))


def _value_type(hint: Any) -> type:
    """The type a field holds when it is set: ``int | None`` -> int."""
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def options_parser(
    prog: str, description: str, doc: str, config: type, options: Iterable[Option]
) -> argparse.ArgumentParser:
    """The command's parser (``console.command_parser``: ``doc`` gives the examples) with a flag for each row (see
    :func:`add_options`)."""
    parser = command_parser(prog, description, doc)
    add_options(parser, config, options)
    return parser


def add_options(parser: argparse.ArgumentParser, config: type, options: Iterable[Option]) -> None:
    """Add a flag for each row to ``parser``, with the default and value type of the row's field of ``config`` (a
    dataclass whose fields all have defaults)."""
    hints = typing.get_type_hints(config)
    defaults = config()
    for option in options:
        name = option.field.replace("_", "-")
        default = getattr(defaults, option.field)
        kind = _value_type(hints[option.field])
        if kind is bool:  # a switch that turns the default around
            flag, action = (f"--no-{name}", "store_false") if default else (f"--{name}", "store_true")
            parser.add_argument(flag, dest=option.field, action=action, help=option.help)
        else:
            parser.add_argument(f"--{name}", type=kind, default=default, choices=option.choices, help=option.help)


def option_values(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The config fields the rows set, as parsed: keyword arguments for the config dataclass."""
    return {option.field: getattr(args, option.field) for option in options}


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
    *,
    log_level: int,
) -> int:
    """A command's entry point: log messages of ``log_level`` and up as plain lines, parse ``argv`` (sys.argv when
    None) and return ``body``'s exit code on the arguments, run in ``console.command_frame`` (2 on a user error,
    128 + the signal number when stopped by one)."""
    logging.basicConfig(level=log_level, format="%(message)s")
    args = parser.parse_args(argv)
    return command_frame(prog, lambda: body(args))
