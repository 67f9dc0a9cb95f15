"""Make `cifar10-sample`, the CIFAR-10 images shipped with sparsesteer for offline use.

Copies, per split (train, test) and CIFAR-10 class, PER_CLASS JPEG files of the real CIFAR-10
images in ../shared/data/cifar10-jpeg/{train,test}/CLASS/NNNN.jpg (bytes unchanged) to
sparsesteer/data/cifar10_sample/{train,test}/CLASS/NNNNN.jpg (the source's number, 5 digits), and
writes SHA256SUMS (`sha256sum -c` format, sorted by path) and card.json beside them.

The choice is seeded and depends on nothing but file names: per split and class, the PER_CLASS
files with the smallest sha256 of "SEED/SPLIT/CLASS/FILE". Rerunning it writes the same bytes.
It does nothing (exit 0) where the source folder is absent, as in a user's clone.

    python scripts/make_cifar10_sample.py [--src DIR] [--out DIR] [--seed 0] [--per-class 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
OUT = ROOT / "sparsesteer" / "data" / "cifar10_sample"
SPLITS = ("train", "test")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def choose(files: list[str], seed: int, split: str, cls: str, n: int) -> list[str]:
    """The n files with the smallest sha256("seed/split/class/file"), sorted by name."""
    key = {f: hashlib.sha256(f"{seed}/{split}/{cls}/{f}".encode()).hexdigest() for f in files}
    return sorted(sorted(files, key=key.__getitem__)[:n])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=SRC, help="cifar10-jpeg folder (SPLIT/CLASS/NNNN.jpg)")
    p.add_argument("--out", type=Path, default=OUT, help="folder to (re)write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=100)
    args = p.parse_args(argv)
    if not all((args.src / s).is_dir() for s in SPLITS):
        print(f"skipped: {args.src} has no {'/'.join(SPLITS)} folders (the CIFAR-10 JPEGs beside the project)")
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sums: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        counts[split] = {}
        for cls in CLASSES:
            files = sorted(f.name for f in (args.src / split / cls).glob("*.jpg"))
            picked = choose(files, args.seed, split, cls, args.per_class)
            if len(picked) != args.per_class:
                sys.exit(f"{args.src / split / cls}: {len(files)} JPEG files, fewer than --per-class {args.per_class}")
            (tmp / split / cls).mkdir(parents=True)
            for name in picked:
                data = (args.src / split / cls / name).read_bytes()
                with Image.open(args.src / split / cls / name) as im:
                    if im.size != (32, 32) or im.mode != "RGB":
                        sys.exit(
                            f"{args.src / split / cls / name}: {im.mode} {im.size}, not a 32 x 32 RGB CIFAR-10 image"
                        )
                rel = f"{split}/{cls}/{int(Path(name).stem):05d}.jpg"
                (tmp / rel).write_bytes(data)
                sums.append(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
            counts[split][cls] = len(picked)
    manifest = "".join(sorted(sums, key=lambda line: line.split("  ", 1)[1]))
    (tmp / "SHA256SUMS").write_text(manifest)
    card = {
        "name": "cifar10-sample",
        "description": (
            "A small seeded, class-stratified sample of real CIFAR-10 images shipped with sparsesteer so that the "
            "testbed CLIP (--model testbed) can be run with no download. For offline use (quickstart, demos, "
            "tests), not for reported results: use the full cifar10 for numbers."
        ),
        "source": {
            "dataset": "CIFAR-10",
            "citation": "Alex Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
            "url": "https://www.cs.toronto.edu/~kriz/cifar.html",
            "files": (
                "cifar10-jpeg/{split}/{class}/NNNN.jpg: the CIFAR-10 images as 32 x 32 JPEG files (train: the first "
                "1,000 training images of each class; test: the whole test split); NNNNN here is NNNN there"
            ),
            "encoding": "the JPEG bytes copied unchanged (JPEG is lossy: pixels differ slightly from the pickles)",
        },
        "splits": {
            "train": "from CIFAR-10's training split (the testbed CLIP was trained on these images)",
            "test": "from CIFAR-10's test split (unseen in the testbed's training)",
        },
        "selection": {
            "rule": "per split and class, the per_class files with the smallest sha256 of 'SEED/SPLIT/CLASS/FILE'",
            "seed": args.seed,
            "per_class": args.per_class,
        },
        "counts": counts,
        "manifest": "SHA256SUMS",
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
        "made_by": "scripts/make_cifar10_sample.py",
    }
    (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out}: {len(sums)} images, {size / 1e6:.2f} MB, manifest sha256 {card['manifest_sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
