"""``vllm-prune``: serve a model with pruning, or write the tiny demo model.

``vllm-prune serve [MODEL] [vLLM serve options] [--prune-default M --prune-ratio R]``
runs vLLM's own ``serve`` command (same options, same app) with the prune
middleware installed and per-request ``mm_processor_kwargs`` enabled (the
middleware lets only prune fields through). Without MODEL it serves the
embedded ``shapes-llava``, a small LLaVA-1.5 trained in this repository on the
synthetic ``shapes`` benchmark. ``vllm-prune build-demo [DIR]`` writes the
random-weight ``tiny-llava`` the tests use.

``vllm-prune eval ...`` measures accuracy per pruning setting through a server
(``vllm-prune eval --help``); ``vllm-prune analyze positions|overlay ...`` plots
which visual tokens a method keeps (``vllm-prune analyze --help``).
"""

from __future__ import annotations

import argparse
import sys

from vllm_prune import shapes_llava
from vllm_prune.demo_model import build_tiny_llava
from vllm_prune.methods import method_names
from vllm_prune.spec import DEFAULT_RATIO

MIDDLEWARE = "server.middleware.PruneMiddleware"
DEFAULT_NAME = shapes_llava.NAME
# The embedded models are tiny: float32 and eager mode run anywhere, CPU included.
# fmt: off
DEMO_ARGS = [
    "--dtype", "float32",
    "--enforce-eager",
    "--max-model-len", "2048",
]
# fmt: on


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--prune-ratio must be in [0, 1), got {value}")
    return value


def add_prune_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vllm-prune")
    group.add_argument(
        "--prune-default",
        choices=method_names(),
        default=None,
        help="Prune method for requests that name none (default: no pruning).",
    )
    group.add_argument(
        "--prune-ratio",
        type=_ratio,
        default=DEFAULT_RATIO,
        help="Ratio for requests that name a method but neither prune_ratio "
        f"nor prune_keep (default {DEFAULT_RATIO}).",
    )


def _has_model(argv: list[str]) -> bool:
    if argv and not argv[0].startswith("-"):
        return True
    return any(a == "--model" or a.startswith("--model=") for a in argv)


def serve(argv: list[str]) -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import (
        make_arg_parser,
        validate_parsed_serve_args,
    )
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if not _has_model(argv):
        model = shapes_llava.weights_folder()
        argv = [str(model), *DEMO_ARGS, "--served-model-name", DEFAULT_NAME, *argv]

    cli_env_setup()
    parser = make_arg_parser(
        FlexibleArgumentParser(
            prog="vllm-prune serve",
            description="vLLM's OpenAI-compatible server with visual-token pruning.",
        )
    )
    add_prune_args(parser)
    args = parser.parse_args(argv)
    args.trust_request_mm_kwargs = True  # the middleware admits prune fields only
    if MIDDLEWARE not in args.middleware:
        args.middleware.append(MIDDLEWARE)
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: vllm-prune {serve [MODEL] [options], build-demo [DIR], eval [options], "
        "analyze {positions,overlay} [options]}"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command == "serve":
        serve(rest)
    elif command == "build-demo":
        print(build_tiny_llava(rest[0] if rest else None))
    elif command == "eval":
        from vllm_prune.eval.cli import main as eval_main

        sys.exit(eval_main(rest))
    elif command == "analyze":
        from vllm_prune.eval.analyze import main as analyze_main

        sys.exit(analyze_main(rest))
    else:
        sys.exit(f"unknown command {command!r}\n{usage}")


if __name__ == "__main__":
    main()
