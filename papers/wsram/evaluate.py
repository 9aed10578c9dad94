"""Evaluate a trained WS-RAM run on the test set (Table 1) with its own glimpses and with random ones.

    python papers/wsram/evaluate.py --run-dir RUN_DIR [--num-samples M] [--test-size N]

RUN_DIR is a train.py output directory (config.json and checkpoints/step_<N>/); the latest checkpoint is
used. Prints one JSON line:
  test_error                   glimpses from the learned prior (T = 1), p(y | I) averaged over M sequences;
  test_error_random_glimpses   the same network fed uniformly random glimpses instead: how much of its
                               accuracy the learned attention policy is responsible for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.metrics import correct
from core.runs import load_run
from papers.wsram.config import WSRAMConfig
from papers.wsram.model import WSRAM, build_model
from papers.wsram.train import build_datasets


def test_set(cfg: WSRAMConfig, test_size: int):
    """The run's own test set (its dataset, canvas and seed), with `test_size` examples."""
    return build_datasets(dataclasses.replace(cfg, test_size=test_size))[1]


@torch.no_grad()
def test_errors(cfg: WSRAMConfig, model: WSRAM, num_samples: int, test_size: int, seed: int = 0,
                batch_size: int = 250) -> dict[str, float]:
    data = test_set(cfg, test_size)
    torch.manual_seed(seed)
    wrong = {"test_error": 0, "test_error_random_glimpses": 0}
    for images, labels in DataLoader(data, batch_size=batch_size):
        for key, random_glimpses in (("test_error", False), ("test_error_random_glimpses", True)):
            logits = model.predict(images, num_samples, random_glimpses=random_glimpses)
            wrong[key] += (1 - correct(logits, labels)).sum().item()
    return {k: v / len(data) for k, v in wrong.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--num-samples", type=int, default=None, help="M (default: the run's num_samples)")
    parser.add_argument("--test-size", type=int, default=None, help="default: the run's test_size")
    args = parser.parse_args(argv)
    if any(v is not None and v < 1 for v in (args.num_samples, args.test_size)):
        raise UserError("--num-samples and --test-size must be >= 1")
    cfg, model = load_run(args.run_dir, WSRAMConfig, build_model)
    result = {"variant": cfg.variant, **test_errors(cfg, model, args.num_samples or cfg.num_samples,
                                                     args.test_size or cfg.test_size)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main_guard(main)
