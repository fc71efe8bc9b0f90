"""``vllm-prune``: serve a model with pruning, or measure what pruning costs in accuracy.

    vllm-prune serve [MODEL] [vllm serve options] [--prune-default M] [--prune-ratio R]
    vllm-prune eval [options]                      # accuracy per setting, through a server
    vllm-prune analyze {positions,overlay} [options]   # which tokens a method keeps

``eval`` and ``analyze`` need the ``eval`` extra (``pip install 'vllm-prune[eval]'``);
each command imports only what it runs, so serving never imports the harness.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

USAGE = (
    "usage: vllm-prune {serve [MODEL] [options], eval [options], "
    "analyze {positions,overlay} [options]}"
)
EVAL_MODULES = ("datasets", "matplotlib", "openai", "tqdm")  # what the eval extra installs


def _missing_eval_extra() -> str | None:
    missing = [name for name in EVAL_MODULES if find_spec(name) is None]
    if not missing:
        return None
    return (
        f"this command needs the eval extra ({', '.join(missing)} missing): "
        "pip install 'vllm-prune[eval]'"
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__)
        return
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from vllm_prune.server.serve import serve

        serve(rest)
    elif command in ("eval", "analyze") and _missing_eval_extra():
        sys.exit(f"vllm-prune {command}: {_missing_eval_extra()}")
    elif command == "eval":
        from vllm_prune.eval.cli import main as eval_main

        sys.exit(eval_main(rest))
    elif command == "analyze":
        from vllm_prune.eval.analyze import main as analyze_main

        sys.exit(analyze_main(rest))
    else:
        sys.exit(f"unknown command {command!r}\n{USAGE}")


if __name__ == "__main__":
    main()
