"""``vllm-prune serve``: vLLM's own ``serve`` command with pruning switched on.

``vllm-prune serve [MODEL] [vLLM serve options] [--prune-default M --prune-ratio R]``
runs vLLM's ``serve`` (same options, same app) with the prune middleware installed
and per-request ``mm_processor_kwargs`` enabled (the middleware lets only prune
fields through). Without MODEL it serves the embedded ``shapes-llava``, a small
LLaVA-1.5 trained in this repository on the synthetic ``shapes`` benchmark.

At start it prints what the version gate decided (``compat.gate``): it exits on a
vLLM older than supported, or on a newer one where what the server itself or the
guarded media connector relies on is broken; it serves unpruned, saying why, where
only what pruning relies on is broken.
"""

from __future__ import annotations

import argparse
import os
import sys

from vllm_prune import auto, demo
from vllm_prune.integration import compat
from vllm_prune.methods import method_names
from vllm_prune.spec import DEFAULT_RATIO

MIDDLEWARE = "vllm_prune.server.middleware.PruneMiddleware"


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--prune-ratio must be in [0, 1), got {value}")
    return value


def _fraction(option: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float:
        value = float(text)
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{option} must be in [0, 1], got {value}")
        return value

    return parse


def _pixels(text: str) -> int:
    from vllm_prune.integration import media

    value = int(text)
    if not 0 < value <= media.PIL_BOUND:
        raise argparse.ArgumentTypeError(
            f"--max-image-pixels must be in [1, {media.PIL_BOUND}], got {value}"
        )
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--media-fetch-timeout must be > 0, got {value}")
    return value


def add_media_args(parser: argparse.ArgumentParser) -> None:
    # Imported here: it subclasses vLLM's connector, which check_vllm checks first.
    from vllm_prune.integration import media

    group = parser.add_argument_group("vllm-prune media fetching")
    group.add_argument(
        "--max-image-pixels",
        type=_pixels,
        default=int(os.environ.get(media.PIXELS_ENV, media.DEFAULT_MAX_IMAGE_PIXELS)),
        help="Images with more pixels (width x height, read from the header before "
        "decoding) are a 400; the default is $VLLM_MAX_IMAGE_PIXELS where set, else "
        f"{media.DEFAULT_MAX_IMAGE_PIXELS} = 8192 x 8192.",
    )
    group.add_argument(
        "--media-fetch-timeout",
        type=_seconds,
        default=media.DEFAULT_DEADLINE_S,
        help="Seconds to fetch one image URL, retries and decoding included; past it the "
        "request is a 504.",
    )
    group.add_argument(
        "--allow-private-media-urls",
        action="store_true",
        help="Fetch media URLs on loopback, private and link-local addresses too (off: "
        "public addresses only; data URLs always work).",
    )


def media_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment that carries the media options to every API-server process."""
    from vllm_prune.integration import media

    return {
        "VLLM_MEDIA_CONNECTOR": media.CONNECTOR_NAME,
        media.PIXELS_ENV: str(args.max_image_pixels),
        media.DEADLINE_ENV: repr(args.media_fetch_timeout),
        media.ALLOW_PRIVATE_ENV: "1" if args.allow_private_media_urls else "0",
    }


def add_prune_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vllm-prune")
    group.add_argument(
        "--prune-default",
        choices=[*method_names(), auto.AUTO],
        default=None,
        help="Prune method for requests that name none (None: no pruning; auto: the "
        "server's load picks the method and ratio).",
    )
    group.add_argument(
        "--prune-ratio",
        type=_ratio,
        default=DEFAULT_RATIO,
        help="Ratio for requests that name a method but neither prune_ratio nor prune_keep.",
    )
    policy = auto.Policy()
    group.add_argument(
        "--prune-auto-start",
        type=_fraction("--prune-auto-start"),
        default=policy.start,
        help="prune: auto: the engine's KV-cache usage (0 to 1) where pruning starts.",
    )
    group.add_argument(
        "--prune-auto-full",
        type=_fraction("--prune-auto-full"),
        default=policy.full,
        help="prune: auto: the KV-cache usage where the ratio reaches --prune-auto-max-ratio "
        "(as it does whenever a request is waiting).",
    )
    group.add_argument(
        "--prune-auto-max-ratio",
        type=_ratio,
        default=policy.max_ratio,
        help="prune: auto: the ratio at full load.",
    )
    group.add_argument(
        "--prune-auto-method",
        choices=[m for m in method_names() if m != "none"],
        default=policy.image_method,
        help="prune: auto: the method for a request with one image (or several without a "
        "question); videos get a temporal method, several images with a question a "
        "text-guided one.",
    )


def check_auto_policy(args: argparse.Namespace) -> None:
    """The --prune-auto-* options make a policy (start below full, a ratio above 0)."""
    try:
        auto.Policy.from_args(args)
    except ValueError as err:
        sys.exit(f"vllm-prune serve: --prune-auto-*: {err}")


def _has_model(argv: list[str]) -> bool:
    if argv and not argv[0].startswith("-"):
        return True
    return any(a == "--model" or a.startswith("--model=") for a in argv)


def serve_parser():  # type: ignore[no-untyped-def]
    """vLLM's ``serve`` parser with the prune options added."""
    cli = compat.serve_cli()
    parser = cli.make_arg_parser(
        cli.FlexibleArgumentParser(
            prog="vllm-prune serve",
            description="vLLM's OpenAI-compatible server with visual-token pruning.",
        )
    )
    add_prune_args(parser)
    add_media_args(parser)
    return parser


def check_vllm() -> None:
    """Print the version gate's decision; exit where this vLLM cannot run the server."""
    gate = compat.gate()
    install = f"pip install 'vllm=={compat.CHECKED[-1]}'"
    if gate.refusal is not None:
        sys.exit(
            f"vllm-prune serve: {gate.refusal}. Install a supported vLLM "
            f"(pip install 'vllm{compat.SUPPORTED}'), or serve without pruning with vllm serve."
        )
    broken = gate.broken(compat.SERVE) + gate.broken(compat.MEDIA)
    if broken:
        sys.exit(
            f"vllm-prune serve: vLLM {gate.version} is newer than the checked releases "
            f"({', '.join(compat.CHECKED)}) and breaks what the server relies on: "
            + "; ".join(broken)
            + f". Install a checked vLLM ({install}), or serve without pruning with vllm serve."
        )
    if gate.unchecked_warning() is not None:
        print(f"vllm-prune serve: {gate.unchecked_warning()}", file=sys.stderr)
    if not gate.pruning:
        print(
            f"vllm-prune serve: {gate.off_reason()}. Every model is served unpruned, and a "
            f"request that names a prune method gets a 400 saying why; {install} to prune.",
            file=sys.stderr,
        )


def serve(argv: list[str]) -> None:
    check_vllm()
    if not _has_model(argv):
        model = demo.weights_folder()
        argv = [str(model), *demo.SERVE_ARGS, "--served-model-name", demo.NAME, *argv]

    cli = compat.serve_cli()
    cli.cli_env_setup()
    args = serve_parser().parse_args(argv)
    check_auto_policy(args)
    args.trust_request_mm_kwargs = True  # the middleware admits prune fields only
    os.environ.update(media_env(args))
    if MIDDLEWARE not in args.middleware:
        args.middleware.append(MIDDLEWARE)
    cli.validate_parsed_serve_args(args)
    cli.ServeSubcommand.cmd(args)
