"""The ``mmagent`` command line: one entry point, subcommands contributed by each layer.

The CLI sits at the top of the layer stack because it wires everything together. Each layer
exposes ``register(subparsers)`` in its own ``cli`` module; a subcommand stores its handler in
``func`` and returns a process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand providers, bottom layer first. Each module has register(subparsers) -> None.
_PROVIDERS = ("perception.cli", "fusion.cli", "agent.cli", "server.serve_cli", "server.serving.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmagent", description="Multimodal agent service.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, including the libraries' own messages and warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a layer not built yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Nothing is ever fetched from a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raw = sys.argv[1:] if argv is None else argv
    if not {"-v", "--verbose"} & set(raw):
        from server.console import quiet_libraries

        quiet_libraries()   # before the subcommands' modules import the libraries
    parser = build_parser()
    args = parser.parse_args(argv)
    from server.console import setup_logging

    setup_logging(verbose=args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from perception.errors import MMAgentError

    try:
        return int(args.func(args) or 0)
    except MMAgentError as exc:
        print(f"mmagent: error [{exc.code}]: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
