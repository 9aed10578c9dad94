"""WS-RAM caption generation (§5.2): BLEU, caption datasets, the multi-scale attention model, training."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import core.data.captions as captions_data
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
from core.runs import load_weights
from papers.wsram.captions import encoder, figures
from papers.wsram.captions import train as caption_train
from papers.wsram.captions.config import get_config
from papers.wsram.captions.evaluate import bleu_scores, trivial_baselines
from papers.wsram.captions.model import MultiScaleCNN, SigmoidTanh, build_model
from papers.wsram.captions.train import surrogate_loss
from papers.wsram.train import SHARED_VARIANTS

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
def test_digit_caption_splits_use_disjoint_digits(monkeypatch):
    pools, load = [], captions_data.load_mnist_digits
    monkeypatch.setattr(captions_data, "load_mnist_digits", lambda split: pools.append(split) or load(split))
    train, test = DigitCaptions("train", 50), DigitCaptions("test", 50, pairs=False)
    assert pools == ["train", "test"]  # each split draws its digits from its own MNIST split
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
def test_sigmoid_tanh_is_tanh_with_its_gradient():
    x = torch.randn(4, 7, 9, dtype=torch.float64) * 4
    x[0, 0, :3] = torch.tensor([0.0, 40.0, -40.0])  # saturation must not produce inf or nan
    assert torch.allclose(SigmoidTanh.apply(x), torch.tanh(x), rtol=0, atol=1e-15)
    assert torch.allclose(SigmoidTanh.apply(x.float()), torch.tanh(x.float()), rtol=0, atol=3e-7)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(SigmoidTanh.apply, (x,))
    grad = torch.randn_like(x)
    ours, = torch.autograd.grad(SigmoidTanh.apply(x), x, grad)
    theirs, = torch.autograd.grad(torch.tanh(x), x, grad)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-14)


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
def test_greedy_generation_stops_at_eos(monkeypatch):
    """Row i's word head prefers <eos> at step i: each row ends there and is padded after it (words <pad>,
    scales -1), and generation stops once every row has ended."""
    cfg = get_config("smoke")
    model = build_model(cfg)
    images, _, _ = _batch(cfg)
    eos, word = model.vocab.stoi["<eos>"], len(model.vocab) - 1
    steps = []

    def word_logits(prev, h, z):
        logits = torch.zeros(h.shape[0], len(model.vocab))
        logits[:, word] = 1
        logits[torch.arange(h.shape[0]) == len(steps), eos] = 2
        steps.append(len(steps))
        return logits

    monkeypatch.setattr(model, "_word_logits", word_logits)
    words, scales = model.generate(images, max_len=6)
    assert words.tolist() == [[word] * i + [eos] + [0] * (3 - i) for i in range(4)]
    assert ((scales == -1) == torch.ones(4, 4, dtype=torch.bool).triu(1)).all()


def _every_caption(vocab_size: int, eos: int, steps: int) -> list[list[int]]:
    """Every token sequence generate() can emit in `steps` steps: through <eos>, or `steps` tokens without."""
    ended, live = [], [[]]
    for _ in range(steps):
        live = [seq + [w] for seq in live for w in range(vocab_size)]
        ended += [seq for seq in live if seq[-1] == eos]
        live = [seq for seq in live if seq[-1] != eos]
    return ended + live


def _through_eos(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos) + 1] if eos in row else row


@torch.no_grad()
def _argmax_attention_log_prob(model, image, captions: list[list[int]]) -> torch.Tensor:
    """Total log-probability of each caption (tokens after <bos>) when every glimpse is the prior's most
    probable (layer, location), as generate() decodes; teacher-forced, one row per caption."""
    steps = max(map(len, captions))
    tokens = torch.tensor([cap + [0] * (steps - len(cap)) for cap in captions])
    length = torch.tensor([len(cap) for cap in captions])
    values, slices, _ = model.features(image[None])
    keys = model.policy.keys(values)
    h, c = model._initial_state(values, len(captions))
    prev = torch.full((len(captions),), model.vocab.stoi["<bos>"])
    total = torch.zeros(len(captions))
    for t in range(steps):
        z = values[0, model.policy(keys, h, slices).argmax(-1)]
        h, c = model.lstm(torch.cat([model.embed(prev), z], -1), (h, c))
        logp = model._word_logits(prev, h, z).log_softmax(-1).gather(1, tokens[:, t:t + 1]).squeeze(1)
        total += torch.where(t < length, logp, 0.0)
        prev = tokens[:, t]
    return total


@pytest.mark.unit
def test_a_beam_of_one_is_greedy():
    cfg = get_config("smoke")
    torch.manual_seed(0)
    model = build_model(cfg)
    images = _batch(cfg, 8)[0]
    greedy = model.generate(images, max_len=6)
    assert all(torch.equal(a, b) for a, b in zip(model.beam_search(images, 6, 1), greedy, strict=True))
    words, scales = model.generate(images, max_len=6, beam_size=3)
    assert words.shape[0] == 8 and words.shape[1] <= 7 and scales.shape == words.shape
    eos = model.vocab.stoi["<eos>"]
    for row, row_scales in zip(words.tolist(), scales.tolist(), strict=True):
        if eos in row:  # <pad> and no glimpse after the end
            assert set(row[row.index(eos) + 1:]) <= {0} and set(row_scales[row.index(eos) + 1:]) <= {-1}


@pytest.mark.unit
@pytest.mark.parametrize("max_len", [1, 2])
def test_a_beam_holding_every_prefix_finds_the_most_probable_caption(max_len):
    """Beam search is exact once the beam can hold every prefix before the last step, k = V ** max_len (at
    max_len 1, a beam as wide as the vocabulary): brute force over every caption it could emit agrees."""
    cfg = get_config("smoke")
    torch.manual_seed(0)
    model = build_model(cfg)
    images = _batch(cfg, 4)[0]
    v, eos = len(model.vocab), model.vocab.stoi["<eos>"]
    captions = _every_caption(v, eos, max_len + 1)
    beam = model.generate(images, max_len, beam_size=v ** max_len)[0].tolist()
    greedy = model.generate(images, max_len)[0].tolist()
    greedy_worse = []
    for i, image in enumerate(images):
        ended = _through_eos(beam[i], eos)
        assert set(beam[i][len(ended):]) <= {0}  # <pad> after the end
        best = _argmax_attention_log_prob(model, image, captions).max().item()
        found, greedy_score = _argmax_attention_log_prob(
            model, image, [ended, _through_eos(greedy[i], eos)]).tolist()
        assert found == pytest.approx(best, abs=1e-5) and found >= greedy_score - 1e-6
        greedy_worse.append(greedy_score < best - 1e-4)
    assert any(greedy_worse)  # greedy misses the best caption somewhere, so the search is what found it


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
    with pytest.raises(SystemExit):
        parse_args(gc, ["--config", "cpu", "--set", "beam_size=0"])
    for every, use_q in ((200, "false"), (150, "true")):  # needs q and a multiple of log_every (100)
        with pytest.raises(SystemExit):
            parse_args(gc, ["--config", "cpu", "--set", "estimator=wsram", "--set", f"use_q={use_q}",
                            "--set", f"shared_variance_every={every}"])
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
    # §5.1's shared-parameter variances on the captioner: measured, and training untouched by them.
    probed = tmp_path / "probed"
    subprocess.run([*cmd[:5], str(probed), *cmd[6:], "--set", "shared_variance_every=2", "--set",
                    "grad_probes=2"], cwd=ROOT, check=True, capture_output=True,
                   env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    with_probe = json.loads((probed / "final_metrics.json").read_text())
    for variant in ("var", "var_c", "wsram", "wsram_c", "wsram_q", "wsram_qc"):
        assert with_probe[f"gvar_policy_{variant}"] > 0 and with_probe[f"gvar_total_{variant}"] > 0
    assert 1 <= with_probe["ess_shared_q"] <= 3 and 1 <= with_probe["ess_shared_prior"] <= 3
    assert {k: v for k, v in with_probe.items() if k in final} == final
    bad = subprocess.run([sys.executable, "papers/wsram/captions/train.py", "--config", "smoke", "--set",
                          "nope=1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1


# ---- a pretrained, frozen encoder ----

@pytest.mark.smoke
def test_a_frozen_encoder_from_a_file_is_loaded_and_not_trained(tmp_path, monkeypatch):
    cfg = get_config("smoke")
    torch.manual_seed(123)  # not the run's seed: the file's weights differ from the model's initial ones
    weights = MultiScaleCNN(1, cfg.cnn_widths, cfg.convs_per_stage, cfg.num_scales).state_dict()
    save_file(weights, str(tmp_path / "encoder.safetensors"))
    built = []

    def spy(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append((model, {n: p.detach().clone() for n, p in model.named_parameters()}))
        return model

    monkeypatch.setattr(caption_train, "build_model", spy)
    out = tmp_path / "run"
    caption_train.main(["--config", "smoke", "--output-dir", str(out), "--set", "max_steps=2",
                        "--set", f"encoder_weights={tmp_path / 'encoder.safetensors'}"])
    ((model, initial),) = built
    trained = load_file(str(out / "checkpoints" / "step_2" / "model.safetensors"))
    for name, w in weights.items():
        assert torch.equal(trained[f"cnn.{name}"], w) and not torch.equal(initial[f"cnn.{name}"], w)
    others = [n for n in initial if not n.startswith("cnn.")]
    assert others and all(not torch.equal(trained[n], initial[n]) for n in others)
    assert not model.train().cnn.training and model.project.training


@pytest.mark.unit
def test_a_pretrained_encoder_sees_imagenet_normalised_images(tmp_path):
    cfg = get_config("smoke")
    (tmp_path / "encoder.safetensors").touch()  # only its existence is checked before train.py loads it
    plain = build_model(cfg, in_channels=3)
    pretrained = build_model(dataclasses.replace(cfg, encoder_weights=str(tmp_path / "encoder.safetensors")),
                             in_channels=3)
    pretrained.load_state_dict(plain.state_dict())
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = plain.features((images - mean[:, None, None]) / std[:, None, None])[0]
    assert torch.allclose(pretrained.features(images)[0], expected, atol=1e-6)


@pytest.mark.smoke
def test_encoder_weights_missing_or_of_another_shape_fail_in_one_line(tmp_path, capsys):
    cfg = get_config("smoke")
    missing = tmp_path / "none.safetensors"
    with pytest.raises(UserError, match="no file at"):
        dataclasses.replace(cfg, encoder_weights=str(missing))
    wide = tmp_path / "wide.safetensors"  # a first stage of 8 channels, not the smoke config's 4
    save_file(MultiScaleCNN(1, (8, 4, 4, 4), cfg.convs_per_stage, cfg.num_scales).state_dict(), str(wide))
    for path, reason in ((missing, "no file at"), (wide, "does not fit")):
        out = tmp_path / path.stem
        with pytest.raises(SystemExit) as failed:
            caption_train.main(["--config", "smoke", "--output-dir", str(out),
                                "--set", f"encoder_weights={path}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert failed.value.code == 2 and len(err) == 1 and reason in err[0] and str(path) in err[0], err
    assert not (tmp_path / "none").exists()  # refused before the run directory was claimed


@pytest.mark.unit
def test_torchvision_vgg16_weights_convert_to_the_encoder(tmp_path):
    widths, convs = (64, 128, 256, 512, 512), (2, 2, 3, 3, 3)
    stages = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]  # torchvision vgg16's conv indices
    state, c = {"classifier.0.weight": torch.zeros(4, 3), "classifier.0.bias": torch.zeros(4)}, 3
    for width, indices in zip(widths, stages, strict=True):
        for k in indices:  # every tensor filled with its layer's index, to see where it lands
            state |= {f"features.{k}.weight": torch.full((width, c, 3, 3), float(k)),
                      f"features.{k}.bias": torch.full((width,), float(k))}
            c = width
    torch.save(state, tmp_path / "vgg16.pth")
    encoder.main([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.safetensors")])
    cnn = MultiScaleCNN(3, widths, convs, num_scales=3)
    load_weights(cnn, tmp_path / "vgg16.safetensors")  # strict: every key and shape fits
    for s, indices in enumerate(stages):
        for i, k in enumerate(indices):
            conv = cnn.stages[s][2 * i]
            assert (conv.weight == k).all() and (conv.bias == k).all()
    with pytest.raises(UserError, match="features.0.weight"):
        encoder.vgg16_to_encoder({"classifier.0.weight": torch.zeros(4, 3)})


@pytest.mark.unit
def test_spec_claims_refer_to_runs_and_metrics():
    metrics = {"bleu1", "bleu2", "bleu3", "bleu4", "train_nll", "train_nll_auc", "test_nll", "unigram_nll",
               "bleu4_constant", "bleu1_constant", "exact_match", "ess", "ess_shared_q", "ess_shared_prior"}
    metrics |= {f"gvar_{part}_{variant}" for part in ("policy", "total") for variant in SHARED_VARIANTS}
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
