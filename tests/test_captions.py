"""WS-RAM caption generation (§5.2): BLEU, caption datasets, the multi-scale attention model, training."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.data.captions import (
    DigitCaptions,
    Vocabulary,
    build_caption_dataset,
    load_flickr8k,
    tokenize,
)
from core.errors import UserError
from core.estimators import variational_bound_loss, wake_sleep_loss
from core.reproduce import load_spec
from papers.wsram.captions import figures
from papers.wsram.captions.config import get_config
from papers.wsram.captions.evaluate import bleu_scores, trivial_baselines
from papers.wsram.captions.model import build_model
from papers.wsram.captions.train import surrogate_loss

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "reproductions" / "wsram-captions.toml"


# ---- BLEU (nltk corpus_bleu) against hand-computed values ----

@pytest.mark.unit
def test_bleu_known_values():
    # Papineni et al. 2002's example: modified unigram precision 2/7, candidate as long as a reference.
    refs = [[tokenize("the cat is on the mat"), tokenize("there is a cat on the mat")]]
    assert bleu_scores(refs, [["the"] * 7])["bleu1"] == pytest.approx(100 * 2 / 7)
    # unigrams 5/6 match, bigrams 3/5 (a cat, cat sat, sat on), equal lengths: BLEU-2 = sqrt(5/6 * 3/5)
    s = bleu_scores([[tokenize("a cat sat on a mat")]], [tokenize("a cat sat on the mat")])
    assert s["bleu1"] == pytest.approx(100 * 5 / 6)
    assert s["bleu2"] == pytest.approx(100 * math.sqrt(0.5))
    # brevity penalty: a 3-word exact prefix of a 6-word reference, BP = exp(1 - 6/3)
    short = bleu_scores([[tokenize("a b c d e f")]], [["a", "b", "c"]])
    assert short["bleu1"] == pytest.approx(100 * math.exp(-1))
    assert all(v == pytest.approx(100) for v in bleu_scores(refs, [refs[0][0]]).values())
    with pytest.raises(UserError):
        bleu_scores([], [])


# ---- datasets ----

@pytest.mark.unit
def test_vocabulary_round_trip():
    vocab = Vocabulary(["a", "cat"])
    ids = vocab.encode(["a", "dog", "cat"], max_len=4)
    assert ids.tolist() == [1, vocab.stoi["a"], 3, vocab.stoi["cat"], 2, 0]
    assert vocab.decode(ids) == ["a", "<unk>", "cat"]
    assert vocab.encode(["a"] * 9, max_len=2).tolist() == [1, vocab.stoi["a"], vocab.stoi["a"], 2]


@pytest.mark.unit
def test_digit_captions_match_their_scenes():
    data = DigitCaptions("train", 200, seed=3)
    again = DigitCaptions("train", 200, seed=3)
    assert torch.equal(data.images, again.images) and data.captions == again.captions
    assert not torch.equal(data.images, DigitCaptions("train", 200, seed=4).images)
    for i in range(200):
        (words,) = data.references(i)
        first, (d0, d1) = words[1] if len(words) > 3 else words[2], data.labels[i].tolist()
        box0, box1 = data.boxes[i].tolist()
        assert first == ("zero one two three four five six seven eight nine".split())[d0]
        image = data[i][0][0]
        assert image[box0[0]:box0[2], box0[1]:box0[3]].max() > 0.5  # the digit is where the box says
        if len(words) == 3:  # "a small two" / "a big two"
            assert d1 == -1 and (box0[2] - box0[0] > 20) == (words[1] == "big")
            assert image.sum() == pytest.approx(image[box0[0]:box0[2], box0[1]:box0[3]].sum())
        elif "above" in words:
            assert box0[2] <= box1[0]  # the first-named digit lies wholly above the second
        else:
            assert words[2:4] == ["left", "of"] and box0[3] <= box1[1]
    image, caption, index = data[5]
    assert image.shape == (1, 48, 48) and caption.shape == (8,) and index == 5
    with pytest.raises(UserError):
        DigitCaptions("train", 4, canvas=30)


@pytest.mark.unit
def test_digit_caption_splits_use_disjoint_digits():
    train, test = DigitCaptions("train", 50), DigitCaptions("test", 50, pairs=False)
    assert len(test) == test.num_images == 50 and len(train) == 50
    assert train.vocab.itos == test.vocab.itos
    assert not torch.equal(train.images, test.images)


def _fake_flickr8k(root: Path) -> Path:
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    names = [f"{i}_x.jpg" for i in range(4)]
    lines = []
    for i, name in enumerate(names):
        Image.new("RGB", (40 + 8 * i, 32), (60 * i, 0, 0)).save(root / "Flicker8k_Dataset" / name)
        lines += [f"{name}#{k}\tA dog runs, {'fast' if k else 'slowly'} {i}." for k in range(5)]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, chosen in (("train", names[:2]), ("dev", names[2:3]), ("test", names[3:])):
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(chosen) + "\n")
    return root


@pytest.mark.unit
def test_flickr8k_standard_layout(tmp_path):
    root = _fake_flickr8k(tmp_path / "flickr8k")
    train = build_caption_dataset(str(root), "train", image_size=16, max_len=5, min_count=6)
    assert len(train) == 10 and train.num_images == 2  # 5 (image, caption) pairs per image
    assert train.references(0)[0] == ["a", "dog", "runs", "slowly", "0"]
    # min_count=6: "fast" is in 8 training captions, "slowly" in 2, "0" in 5
    assert "fast" in train.vocab.stoi and "slowly" not in train.vocab.stoi and "0" not in train.vocab.stoi
    image, caption, index = train[7]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1 and index == 1
    test = load_flickr8k(root, "test", image_size=16, vocab=train.vocab, pairs=False)
    assert len(test) == 1 and len(test.references(0)) == 5
    with pytest.raises(UserError, match="vocabulary"):
        load_flickr8k(root, "test", image_size=16)
    (root / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(UserError, match="Flickr_8k.devImages.txt"):
        load_flickr8k(root, "val", vocab=train.vocab)
    with pytest.raises(UserError, match="no Flicker8k_Dataset"):
        load_flickr8k(tmp_path / "nowhere", "train")


# ---- model and estimators ----

def _batch(cfg, n=4):
    data = DigitCaptions("train", n, canvas=cfg.image_size)
    return (torch.stack([data[i][0] for i in range(n)]), torch.stack([data[i][1] for i in range(n)]), data)


@pytest.mark.unit
def test_model_rollout_shapes_and_masking():
    cfg = get_config("smoke")
    torch.manual_seed(0)
    model = build_model(cfg)
    images, captions, _ = _batch(cfg)
    out = model(images, captions, num_samples=3)
    assert out["log_py"].shape == out["log_pa"].shape == (3, 4)
    assert (out["log_py"] < 0).all() and (out["log_pa"] <= 0).all()
    assert out["tokens"].tolist() == (captions[:, 1:] != 0).sum(1).tolist()
    assert out["scales"].shape[:2] == (3, 4) and out["scales"].max() < cfg.num_scales
    # padding after <eos> adds nothing: the same captions padded further give the same log-likelihood
    longer = torch.cat([captions, torch.zeros(4, 3, dtype=torch.long)], 1)
    torch.manual_seed(1)
    a = model(images, captions, 3)["log_py"]
    torch.manual_seed(1)
    assert torch.allclose(a, model(images, longer, 3)["log_py"])


@pytest.mark.unit
def test_attention_is_a_distribution_over_every_layer_and_location():
    cfg = get_config("smoke")
    model = build_model(cfg)
    values, slices, scale = model.features(torch.rand(2, 1, cfg.image_size, cfg.image_size))
    assert [s.stop - s.start for s in slices] == [144, 36, 9]  # 12x12, 6x6, 3x3 maps of a 48 px canvas
    query = torch.randn(6, cfg.hidden)
    logp = model.policy(model.policy.keys(values), query, slices)
    assert logp.shape == (6, 189)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(6), atol=1e-5)
    per_layer = torch.stack([logp[:, s].exp().sum(-1) for s in slices], -1)  # marginal p(layer)
    assert torch.allclose(per_layer, model.policy.layer(query).softmax(-1), atol=1e-5)
    assert scale.tolist() == [0] * 144 + [1] * 36 + [2] * 9


@pytest.mark.unit
def test_inference_network_sees_the_target_word_and_is_trained_by_eq14_only():
    cfg = get_config("smoke")
    cfg.use_q, cfg.control_variates = True, True
    torch.manual_seed(0)
    model = build_model(cfg)
    images, captions, _ = _batch(cfg)
    out = model(images, captions, 3, "q")
    assert out["log_proposal"].requires_grad and not torch.equal(out["log_proposal"], out["log_pa"])
    model.zero_grad()
    ws = wake_sleep_loss(out["log_py"], out["log_pa"], log_q=out["log_proposal"], control_variate=True)
    ws.inference_loss.backward(retain_graph=True)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("q_") for n in grads)  # eq. 14 moves only q (detached inputs)
    assert surrogate_loss(cfg, out).item() == pytest.approx(ws.loss.item())
    # q's glimpse for word t depends on the preceding target word
    q_in = torch.cat([torch.zeros(2, cfg.hidden), model.q_embed(torch.tensor([4, 5]))], -1)
    values, slices, _ = model.features(images[:1].expand(2, -1, -1, -1))
    logq = model.q_attention(model.q_attention.keys(values), q_in, slices)
    assert not torch.allclose(logq[0], logq[1])


@pytest.mark.unit
def test_var_surrogate_is_the_variational_bound():
    cfg = get_config("smoke")
    cfg.estimator, cfg.control_variates = "var", True
    out = build_model(cfg)(*_batch(cfg)[:2], 3)
    expected = variational_bound_loss(out["log_py"], out["log_pa"], control_variate=True)
    assert surrogate_loss(cfg, out).item() == pytest.approx(expected.item())


@pytest.mark.unit
def test_greedy_generation_stops_at_eos():
    cfg = get_config("smoke")
    model = build_model(cfg)
    images, _, _ = _batch(cfg)
    words, scales = model.generate(images, max_len=6)
    assert words.shape[0] == 4 and words.shape[1] <= 7 and scales.shape == words.shape
    eos = model.vocab.stoi["<eos>"]
    for row in words.tolist():
        if eos in row:
            assert all(w == 0 for w in row[row.index(eos) + 1:])


@pytest.mark.unit
def test_trivial_baselines():
    train, test = DigitCaptions("train", 300), DigitCaptions("test", 100, pairs=False)
    base = trivial_baselines(train, test, list(range(100)))
    assert 0 < base["bleu1_constant"] < 60 and base["bleu4_constant"] < 10
    # every caption starts with "a": the unigram model pays about -log p(word) per word, > 1 nat here
    assert 1.0 < base["unigram_nll"] < math.log(len(train.vocab))


@pytest.mark.unit
def test_config_validation():
    from core.cli import parse_args
    from papers.wsram.captions.config import get_config as gc
    with pytest.raises(SystemExit):
        parse_args(gc, ["--config", "cpu", "--set", "estimator=var", "--set", "use_q=true"])
    with pytest.raises(SystemExit):
        parse_args(gc, ["--config", "cpu", "--set", "num_scales=9"])
    cfg, _ = parse_args(gc, ["--config", "cpu", "--set", "q_word=next", "--seed", "2"])
    assert cfg.q_word == "next" and cfg.seed == 2 and cfg.variant == "WS-RAM"


# ---- end to end ----

@pytest.mark.smoke
def test_train_smoke_writes_metrics_and_figure(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "papers/wsram/captions/train.py", "--config", "smoke", "--output-dir", str(out),
           "--set", "estimator=wsram", "--set", "use_q=true", "--set", "control_variates=true"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={"OMP_NUM_THREADS": "1",
                   "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    final = json.loads((out / "final_metrics.json").read_text())
    for key in ("bleu1", "bleu4", "train_nll", "train_nll_auc", "test_nll", "unigram_nll", "bleu4_constant",
                "ess", "steps"):
        assert math.isfinite(final[key]), key
    assert final["steps"] == 4 and 1 <= final["ess"] <= 3
    logs = tmp_path / "cpu-logs"
    for run in ("var_c", "wsram_qc"):
        (logs / run).mkdir(parents=True)
        (logs / run / "seed0.jsonl").write_text((out / "metrics.jsonl").read_text())
    path = figures.main(["--logs", str(logs)])
    assert path.is_file() and path.name == "cpu-fig4.png"
    bad = subprocess.run([sys.executable, "papers/wsram/captions/train.py", "--config", "smoke", "--set",
                          "nope=1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1


@pytest.mark.unit
def test_spec_claims_refer_to_runs_and_metrics():
    metrics = {"bleu1", "bleu2", "bleu3", "bleu4", "train_nll", "train_nll_auc", "test_nll", "unigram_nll",
               "bleu4_constant", "bleu1_constant", "exact_match", "ess"}
    for scale in ("smoke", "cpu", "paper"):
        spec = load_spec(SPEC, scale)
        assert spec.paper == "wsram-captions" and spec.script.exists()
        for run in spec.runs:
            parse_cfg = get_config(run.config)
            assert parse_cfg.name == run.config
    cpu = load_spec(SPEC, "cpu")
    names = {r.name for r in cpu.runs}
    assert len(cpu.seeds) >= 3 and any(c["required"] for c in cpu.claims)
    for c in cpu.claims:
        for side in (c["lhs"], c["rhs"]):
            if isinstance(side, str):
                run, metric = side.split("/", 1)
                assert run in names and metric in metrics, side
