"""Evaluate a trained caption model (WS-RAM §5.2): BLEU-1..4 on the test images (Table 2) and per-word NLL.

    python papers/wsram/captions/evaluate.py --run-dir RUN_DIR [--num-samples M] [--bleu-size N]
        [--beam-size K]

RUN_DIR is a train.py output directory (config.json and checkpoints/step_<N>/); the latest checkpoint is
used. Prints one JSON line. BLEU is corpus BLEU (nltk's `corpus_bleu`, no smoothing, uniform n-gram
weights, brevity penalty over the corpus) against all reference captions of each image, x100 as in Table 2;
captions are generated with the prior's most probable glimpse at every word, greedily or by beam search
(`CaptionAttentionModel.beam_search`; --beam-size, default the run's beam_size).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import torch
from nltk.translate.bleu_score import corpus_bleu

from core.cli import ArgumentParser, main_guard
from core.data.captions import CaptionDataset, build_caption_dataset
from core.errors import UserError
from core.runs import load_config, load_weights
from papers.wsram.captions.config import CaptionConfig
from papers.wsram.captions.model import CaptionAttentionModel, build_model


def bleu_scores(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (x100) of word-list hypotheses against each one's list of references."""
    if len(references) != len(hypotheses) or not hypotheses:
        raise UserError(f"BLEU needs one reference list per hypothesis, got {len(references)} and "
                        f"{len(hypotheses)}")
    scores = {}
    with warnings.catch_warnings():  # nltk warns when some n-gram order has no match: the score is 0 then
        warnings.simplefilter("ignore")
        for n in range(1, 5):
            scores[f"bleu{n}"] = 100 * corpus_bleu(references, hypotheses, weights=(1 / n,) * n)
    return scores


def make_datasets(cfg: CaptionConfig) -> tuple[CaptionDataset, CaptionDataset]:
    """(training (image, caption) pairs, test images with all their references)."""
    if cfg.dataset == "digit-captions":
        common = dict(canvas=cfg.image_size, seed=cfg.seed)
        return (build_caption_dataset(cfg.dataset, "train", n=cfg.train_size, **common),
                build_caption_dataset(cfg.dataset, "test", n=cfg.test_size, pairs=False, **common))
    common = dict(image_size=cfg.image_size, max_len=cfg.max_len, min_count=cfg.min_word_count)
    train = build_caption_dataset(cfg.dataset, "train", **common)
    return train, build_caption_dataset(cfg.dataset, "test", vocab=train.vocab, pairs=False, **common)


def _batches(dataset: CaptionDataset, indices: list[int], batch_size: int, device: torch.device):
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        images, captions = (torch.stack([item[k] for item in items]).to(device) for k in (0, 1))
        yield images, captions, [i for _, _, i in items]


@torch.no_grad()
def caption_bleu(model: CaptionAttentionModel, dataset: CaptionDataset, size: int = 0,
                 batch_size: int = 100, beam_size: int = 1) -> dict[str, float]:
    """Table 2: BLEU-1..4 of the captions (greedy, or a beam of `beam_size`) of the first `size` images (0:
    all), the fraction of captions equal to a reference, and the fraction of glimpses spent at each scale
    (finest first)."""
    model.eval()
    device = next(model.parameters()).device
    n = min(size or len(dataset), len(dataset))
    hypotheses, references, exact, scale_counts = [], [], 0, torch.zeros(model.cfg.num_scales)
    for images, _, image_ids in _batches(dataset, list(range(n)), batch_size, device):
        words, scales = model.generate(images, dataset.max_len, beam_size)
        for row, i in zip(words.tolist(), image_ids, strict=True):
            hyp, refs = model.vocab.decode(row), dataset.references(i)
            hypotheses.append(hyp)
            references.append(refs)
            exact += hyp in refs
        scale_counts += torch.bincount(scales[scales >= 0].cpu(), minlength=model.cfg.num_scales)
    usage = scale_counts / scale_counts.sum().clamp_min(1)
    return {**bleu_scores(references, hypotheses), "exact_match": exact / n,
            **{f"scale{j}_usage": float(u) for j, u in enumerate(usage)}}


@torch.no_grad()
def caption_nll(model: CaptionAttentionModel, dataset: CaptionDataset, indices: list[int], num_samples: int,
                batch_size: int = 100) -> float:
    """Per-word NLL -sum log p(y | I) / sum |y| (words + <eos>), log p(y | I) estimated with M attention
    sequences from the prior (the eq. 9 bound, so an upper bound on the NLL in expectation)."""
    model.eval()
    device = next(model.parameters()).device
    total, words = 0.0, 0
    for images, captions, _ in _batches(dataset, indices, batch_size, device):
        total -= model.log_likelihood(images, captions, num_samples).sum().item()
        words += int((captions[:, 1:] != 0).sum())
    return total / words


def trivial_baselines(train: CaptionDataset, test: CaptionDataset, probe: list[int],
                      size: int = 0) -> dict[str, float]:
    """What a captioner that ignores the image gets: BLEU of the most frequent training caption for every
    test image, and the per-word NLL of the probe captions under the training captions' unigram model."""
    captions = [c for refs in train.captions for c in refs]
    counts = Counter(tuple(c) for c in captions)
    constant = list(counts.most_common(1)[0][0])
    n = min(size or test.num_images, test.num_images)
    bleu = bleu_scores([test.references(i) for i in range(n)], [constant] * n)
    unigram = Counter(w for c in captions for w in [*c[:train.max_len], "<eos>"])
    total = sum(unigram.values())
    nll, words = 0.0, 0
    for j in probe:
        ids = train[j][1]
        for w in train.vocab.decode(ids) + ["<eos>"]:
            nll -= math.log(max(unigram[w], 0.5) / total)  # an unseen (<unk>) word gets half a count
            words += 1
    return {**{f"{k}_constant": v for k, v in bleu.items()}, "unigram_nll": nll / words}


def load_run(run_dir: Path) -> tuple[CaptionConfig, CaptionAttentionModel, CaptionDataset, CaptionDataset]:
    """The run's config, its model with the latest checkpoint's weights, and its datasets."""
    cfg = load_config(run_dir, CaptionConfig)
    train, test = make_datasets(cfg)
    model = build_model(cfg, train.vocab, test[0][0].shape[0])
    load_weights(model, run_dir)
    return cfg, model.eval(), train, test


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--num-samples", type=int, default=None, help="M for the NLL (default: the run's)")
    parser.add_argument("--bleu-size", type=int, default=None, help="test images to caption (default: run's)")
    parser.add_argument("--beam-size", type=int, default=None, help="1: greedy (default: the run's)")
    args = parser.parse_args(argv)
    if any(v is not None and v < 1 for v in (args.num_samples, args.bleu_size, args.beam_size)):
        raise UserError("--num-samples, --bleu-size and --beam-size must be >= 1")
    cfg, model, _, test = load_run(args.run_dir)
    torch.manual_seed(cfg.seed)
    size = args.bleu_size or cfg.bleu_size
    beam = args.beam_size or cfg.beam_size
    result = {"variant": cfg.variant, **caption_bleu(model, test, size, beam_size=beam),
              "test_nll": caption_nll(model, test, list(range(min(size or len(test), len(test)))),
                                      args.num_samples or cfg.num_samples)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main_guard(main)
