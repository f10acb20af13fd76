"""Turn a training run's ``last.pt`` into the shipped default model ``train/assets/default-tiny.pt``.

The shipped file keeps everything a checkpoint describes (preset, model arguments, schedule, step, training
configuration, validation history) but drops the optimizer and discriminator states, which would triple its size;
``provq-train --resume default`` then fine-tunes with a fresh optimizer.

    python tools/ship_default_model.py runs/default/last.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from provq.train import checkpoint

STATES_NOT_SHIPPED = ("optimizer", "discriminator", "disc_optimizer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_checkpoint", type=Path, help="last.pt of the run to ship")
    parser.add_argument("--out", type=Path, default=None, help="default: the package's default checkpoint path")
    args = parser.parse_args(argv)
    state = checkpoint.load(args.run_checkpoint)
    for key in STATES_NOT_SHIPPED:
        state[key] = None
    out = args.out or checkpoint.default_checkpoint()
    checkpoint.save_atomic(state, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, step {state['step']})")


if __name__ == "__main__":
    main()
