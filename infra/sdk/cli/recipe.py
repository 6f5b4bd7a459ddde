"""What a command asks of each image's task: a model and output options, from its flags.

One recipe travels as the object's user metadata (`--via s3`, like `mc cp --attr`) or as the
API's form fields; its `signature` is what a re-run compares to know whether a file's results
were made the way it asks now.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from maskflow.infra.domain import options
from maskflow.infra.domain.catalog import METADATA_KEY
from maskflow.infra.sdk.cli.exits import UsageError

# The options that are flags: given means "true".
_SWITCHES = ("crop", "post_process", "premultiplied")


@dataclass(frozen=True)
class Recipe:
    model: str = ""                                   # '' names none: the server's default
    options: dict[str, str] = field(default_factory=dict)  # option texts, as given

    @property
    def parsed(self) -> options.Options:
        return options.parse(self.options)

    @property
    def metadata(self) -> dict[str, str]:
        """The object's user metadata that asks for this recipe."""
        return {**({METADATA_KEY: self.model} if self.model else {}), **options.metadata(self.options)}

    @property
    def signature(self) -> str:
        """'' for the defaults; a bare model name when only that is named, as earlier runs wrote."""
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.model}|{query}" if query else self.model


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--format, --background, --crop, --crop-margin, --refine, --matting-*, --post-process."""
    group = parser.add_argument_group("output options (the service's defaults when not given)")
    for name in options.NAMES:
        schema, flag = options.SCHEMAS[name], "--" + name.replace("_", "-")
        if name in _SWITCHES:
            group.add_argument(flag, action="store_true", help=schema["description"])
        else:
            choices = schema.get("enum")
            group.add_argument(flag, choices=choices, metavar=name.upper(),
                               help=schema["description"] + (f": {', '.join(choices)}" if choices else ""))


def from_args(args: argparse.Namespace) -> Recipe:
    given = {name: "true" if name in _SWITCHES else getattr(args, name) for name in options.NAMES
             if getattr(args, name) not in (None, False)}
    try:
        options.parse(given)
    except options.BadOptions as exc:
        raise UsageError(f"{args.command}: {exc}") from None
    return Recipe(getattr(args, "model", None) or "", given)
