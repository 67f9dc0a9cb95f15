"""`sparsesteer interpret`: per-latent statistics of an SAE over an activation cache."""

from __future__ import annotations

import argparse

from ..utils import config as config_utils

EXAMPLES = """examples:
  sparsesteer interpret --sae runs/sae --activations runs/cache --out runs/stats
  sparsesteer interpret --sae runs/sae-cls --activations runs/cache --vocab imagenet1k --montages 50 --out runs/stats
  sparsesteer interpret --sae runs/sae-block6 --activations runs/cache --labels cifar100 --out runs/stats
  sparsesteer interpret --sae runs/sae --model openai/clip-vit-base-patch32 --dataset cifar10 --split test --out runs/stats
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils.cli import HelpFormatter, add_overwrite
    from .config import InterpretConfig

    p = sub.add_parser(
        "interpret",
        help="per-latent statistics: frequency, histograms, top images, neighbours, concept lens, labels",
        description="One streaming pass of an SAE over an activation cache (or over the activations --model computes "
        "on --dataset images as the pass runs, with no cache): per latent firing frequency, mean "
        "and max activation, an activation histogram, the top images (with per-patch activations and labels), "
        "decoder neighbours and optionally a concept lens, CLIP-Dissect labels and montages. Writes OUT/stats.json + "
        "OUT/stats.safetensors (read them with sparsesteer.interpret.load_stats).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(
        p,
        InterpretConfig,
        metavars={
            "sae": "DIR",
            "activations": "CACHE",
            "out": "STATS",
            "dataset": "D",
            "vocab": "VOCAB",
            "labels": "VOCAB",
        },
    )
    add_overwrite(p)
    p.set_defaults(func=run, output_args=("out", "text_cache"))


def run(args: argparse.Namespace) -> int:
    from ..utils import outputs
    from .config import InterpretConfig
    from .run import INTERRUPTED_RUN, run_interpret

    cfg = config_utils.from_args(InterpretConfig, args, where="interpret")
    outputs.claim(
        cfg.out, overwrite=args.overwrite, own=INTERRUPTED_RUN, inputs=[cfg.sae, cfg.activations, cfg.vocab, cfg.labels]
    )
    out, stats = run_interpret(cfg)
    freq = stats.frequency
    print(
        f"{stats.n_latents} latents over {stats.n_images} images ({stats.n_rows} rows): "
        f"{int((stats.fire_count == 0).sum())} never fire, median frequency {float(sorted(freq)[len(freq) // 2]):.4g}"
    )
    print(f"wrote {out / 'stats.json'} and {out / 'stats.safetensors'}")
    return 0
