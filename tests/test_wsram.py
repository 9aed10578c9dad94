"""WS-RAM (papers/wsram): model shapes, the estimator variants' gradients against their equations, the
exploration heuristics, and smoke runs of training, evaluation and figures."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from core.data import pixel_stats
from core.errors import UserError
from core.glimpse import RetinaSensor, retina
from papers.wsram import evaluate, figures, train
from papers.wsram.config import get_config
from papers.wsram.model import NUM_CLASSES, build_model

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> config fields, as reproductions/wsram.toml selects them
    "var": dict(estimator="var"),
    "var_c": dict(estimator="var", control_variates=True),
    "wsram": dict(estimator="wsram"),
    "wsram_c": dict(estimator="wsram", control_variates=True),
    "wsram_q": dict(estimator="wsram", use_q=True),
    "wsram_qc": dict(estimator="wsram", use_q=True, control_variates=True),
}


def tiny(**fields):
    return dataclasses.replace(get_config("smoke"), **fields)


def batch(cfg, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, cfg.canvas, cfg.canvas, generator=g)
    return images, torch.randint(NUM_CLASSES, (n,), generator=g)


# ---------------------------------------------------------------------------------------------------- config


def test_configs_and_variant_names():
    assert {get_config(n).name for n in ("paper", "cpu", "smoke")} == {"paper", "cpu", "smoke"}
    paper = get_config("paper")
    assert (paper.canvas, paper.num_glimpses, paper.num_samples, paper.max_steps) == (100, 4, 5, 10_000_000)
    assert [tiny(**v).variant for v in VARIANTS.values()] == [
        "VAR", "VAR+c", "WS-RAM", "WS-RAM+c", "WS-RAM+q", "WS-RAM+q+c"]
    with pytest.raises(KeyError):
        get_config("nope")
    with pytest.raises(UserError, match="use_q"):
        tiny(estimator="var", use_q=True)
    with pytest.raises(UserError, match="num_samples"):
        tiny(num_samples=1)


# ---------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("policy,use_q", [("learned", False), ("learned", True), ("random", False)])
def test_rollout_shapes(policy, use_q):
    cfg = tiny(policy=policy, use_q=use_q)
    model = build_model(cfg)
    x, y = batch(cfg, n=4)
    M, N = cfg.num_samples, cfg.num_glimpses
    out = model(x, y, M, "q" if use_q else "prior" if policy == "learned" else "random")
    for key in ("log_py", "log_pa", "log_proposal"):
        assert out[key].shape == (M, 4)
    assert out["logits"].shape == (M, 4, NUM_CLASSES)
    assert out["locs"].shape == (M, 4, N, 2) and out["scales"].shape == (M, 4, N)
    assert out["scales"].min() >= 0 and out["scales"].max() < cfg.num_scales
    assert (out["log_py"] <= 0).all()
    probs = model.predict(x, M)
    assert probs.shape == (4, NUM_CLASSES) and torch.allclose(probs.sum(-1), torch.ones(4))
    assert hasattr(model, "policy") == (policy == "learned") and (model.inference is not None) == use_q


def test_prior_proposal_at_t1_has_equal_densities_and_tempering_widens():
    cfg = tiny()
    model = build_model(cfg)
    x, y = batch(cfg)
    out = model(x, y, cfg.num_samples, "prior")
    assert torch.equal(out["log_pa"].detach(), out["log_proposal"])
    hot = model(x, y, 400, "prior", temperature=4.0)  # std x 2: the sampled spread doubles
    cold = model(x, y, 400, "prior")
    ratio = (hot["locs"] - hot["prior_loc_mean"].permute(1, 0, 2).reshape(hot["locs"].shape)).std() / (
        cold["locs"] - cold["prior_loc_mean"].permute(1, 0, 2).reshape(cold["locs"].shape)).std()
    assert 1.8 < ratio < 2.2


def test_patches_are_the_chosen_retina_scale():
    cfg = tiny()
    model = build_model(cfg)
    x, _ = batch(cfg, n=3)
    loc = torch.rand(6, 2) * 2 - 1  # two actions per image: action i looks at image i % 3
    scale = torch.tensor([0, 2, 1, 1, 0, 2])
    full = retina(x[torch.arange(6) % 3], loc, cfg.glimpse_size, cfg.num_scales, cfg.scale_factor)
    sensor = RetinaSensor(x, cfg.glimpse_size, cfg.num_scales, cfg.scale_factor)
    torch.testing.assert_close(model.glimpse(sensor, loc, scale), F.relu(
        model.what(full[torch.arange(6), scale]) + model.where(torch.cat([loc, F.one_hot(scale, 3)], -1))))


def test_standardized_glimpses_read_off_image_pixels_as_the_background(tmp_path):
    cfg = dataclasses.replace(tiny(), standardize_images=True)
    train_set = train.build_datasets(cfg)[0]
    mean, std = pixel_stats(train_set)
    assert 0 < mean < 0.5 and std > 0  # a sparse canvas in [0, 1]
    model = build_model(cfg)
    model.set_pixel_stats(mean, std)
    blank = torch.zeros(1, 1, cfg.canvas, cfg.canvas)
    sensor = RetinaSensor(blank, cfg.glimpse_size, cfg.num_scales, cfg.scale_factor)
    corner = model.standardize(sensor(torch.tensor([[1.0, 1.0]]), torch.tensor([2])))  # 3/4 off the image
    torch.testing.assert_close(corner, torch.full_like(corner, -mean / std))
    state = build_model(cfg).state_dict()
    assert state["pixel_stats"].tolist() == [0.0, 1.0]  # identity until run() sets it from the data
    train.run(cfg, str(tmp_path))
    saved = load_file(next(tmp_path.glob("**/model.safetensors")))
    torch.testing.assert_close(saved["pixel_stats"], torch.tensor([mean, std]))


def test_low_resolution_image_reaches_prediction_only_through_the_glimpses():
    """§3: the class is read from layer 1, the low-res image enters layer 2, so for fixed actions
    log p(y | a, I) does not depend on the low-res pathway (context layer) at all."""
    cfg = tiny()
    model = build_model(cfg)
    x, y = batch(cfg)
    out = model(x, y, cfg.num_samples)
    params = [model.context.weight, model.in2.weight, model.what[0].weight]
    grads = torch.autograd.grad(out["log_py"].sum(), params, allow_unused=True)
    assert grads[0] is None and grads[1] is None  # layer 2 is not on the path to the prediction
    assert grads[2].abs().sum() > 0
    assert torch.autograd.grad(out["log_pa"].sum(), model.context.weight)[0].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ estimators


def _flat(grads, params):
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def _elementwise_grads(t, params):
    """(M, B, P) per-element gradients of an (M, B) tensor."""
    M, B = t.shape
    return torch.stack([torch.stack([_flat(torch.autograd.grad(t[m, b], params, retain_graph=True,
                                                               allow_unused=True), params)
                                     for b in range(B)]) for m in range(M)])


@pytest.mark.parametrize("name", [*VARIANTS, "var_c_tempered", "wsram_qc_tempered"])
def test_surrogate_gradient_matches_the_papers_equation(name):
    fields = VARIANTS[name.removesuffix("_tempered")]
    cfg = tiny(**fields, explore_temperature=name.endswith("tempered"), temperature=2.0)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    x, y = batch(cfg, n=2)
    out = train.rollout(cfg, model, x.double(), y)
    params = list(model.parameters())
    eta = torch.tensor([n.startswith("inference.") for n, p in model.named_parameters()
                        for _ in range(p.numel())])
    G_py, G_pa = _elementwise_grads(out["log_py"], params), _elementwise_grads(out["log_pa"], params)
    log_py, log_pa, log_prop = (out[k].detach() for k in ("log_py", "log_pa", "log_proposal"))
    M, B = log_py.shape
    if cfg.estimator == "var":  # eq. 5 (+c: leave-one-out mean of log p(y | a) as the baseline)
        reward = log_py - (log_py.sum(0) - log_py) / (M - 1) if cfg.control_variates else log_py
        # tempered samples: each term importance-corrected by p(a) / proposal(a)
        ratio = (log_pa - log_prop).exp()[..., None] if cfg.explore_temperature else 1.0
        ascent = (ratio * (G_py + reward[..., None] * G_pa)).mean((0, 1))
    else:  # eq. 8 (+c: eq. 16), weights from eq. 7 with the proposal actually sampled from, at T = 1
        if not cfg.use_q:
            assert torch.equal(log_prop, log_pa)
        w = torch.softmax(log_py + log_pa - log_prop, 0)
        coef = w - (log_pa - log_prop).exp() / M if cfg.control_variates else w
        ascent = (w[..., None] * G_py + coef[..., None] * G_pa).sum(0).mean(0)
        if cfg.use_q:  # eq. 14 (+c: eq. 17); q's gradient never reaches the prediction network
            G_q = _elementwise_grads(out["log_proposal"], params)
            assert G_q[..., ~eta].abs().max() == 0
            coef_q = w - 1.0 / M if cfg.control_variates else w
            ascent = ascent + (coef_q[..., None] * G_q).sum(0).mean(0)
    assert (ascent[eta] != 0).any() == cfg.use_q
    loss = train.surrogate_loss(cfg, out)
    got = -_flat(torch.autograd.grad(loss, params, allow_unused=True), params)
    assert torch.allclose(got, ascent, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("estimator", ["var", "wsram"])
def test_random_baseline_trains_only_the_classifier_path_with_the_compared_objective(estimator):
    cfg = tiny(policy="random", estimator=estimator)
    model = build_model(cfg)
    x, y = batch(cfg)
    out = train.rollout(cfg, model, x, y)
    log_py = out["log_py"]
    weights = 1 / len(log_py) if estimator == "var" else torch.softmax(log_py.detach(), 0)  # eq. 5 / eq. 8
    assert torch.allclose(train.surrogate_loss(cfg, out), -(weights * log_py).sum(0).mean())
    assert torch.equal(train.exploration_loss(cfg, out), torch.zeros(()))


def test_exploration_heuristics_are_switches_that_push_towards_exploring():
    off = tiny(explore_coverage=False, explore_entropy=False)
    model = build_model(off)
    x, y = batch(off)
    out = model(x, y, off.num_samples)
    assert train.exploration_loss(off, out).item() == 0
    for field in ("explore_coverage", "explore_entropy"):
        cfg = dataclasses.replace(off, **{field: True})
        loss = train.exploration_loss(cfg, out)
        assert loss.requires_grad
        # Collapsing the scale action onto one scale must be penalised.
        collapsed = dict(out, prior_scale_logits=out["prior_scale_logits"] + torch.tensor([20.0, 0, 0]))
        assert train.exploration_loss(cfg, collapsed) > loss


# ---------------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsram") / "run"
    torch.set_num_threads(1)
    final = train.main(["--config", "smoke", "--output-dir", str(out), "--set", "use_q=true",
                        "--set", "control_variates=true", "--set", "shared_variance=true"])
    return out, final


def test_train_error_end_is_the_mean_over_the_last_quarter():
    curve = [{"step": s, "train_error": e} for s, e in [(300, 0.9), (1800, 0.3), (2100, 0.1), (2400, 0.2)]]
    assert train.mean_since(curve, "train_error", 0.75 * 2400) == pytest.approx(0.2)
    assert train.mean_since(curve, "train_error", 9999) == 0.2  # no point that late: the last one


@pytest.mark.smoke
def test_smoke_training_writes_metrics(smoke_run):
    out, final = smoke_run
    assert json.loads((out / "final_metrics.json").read_text()) == final
    shared = [f"gvar_{part}_{v}" for part in ("policy", "total") for v in train.SHARED_VARIANTS]
    for key in ("test_error", "train_error", "train_error_auc", "train_error_end", "ess", "ess_at_error_50",
                "accuracy", "ess_shared_prior", "ess_shared_q", *shared):
        assert key in final
    cfg = get_config("smoke")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train_error" in r]
    assert [r["step"] for r in logged] == list(range(cfg.log_every, cfg.max_steps + 1, cfg.log_every))
    for r in logged:
        assert 0 <= r["train_error"] <= 1 and all(r[k] > 0 for k in shared)
        assert 1 <= r["ess"] <= cfg.num_samples + 1e-6
    assert 0 <= final["test_error"] <= 1 and final["accuracy"] == pytest.approx(1 - final["test_error"])


@pytest.mark.smoke
def test_evaluate_reloads_the_run(smoke_run, monkeypatch):
    out, final = smoke_run
    evaluated, test_errors = [], evaluate.test_errors
    monkeypatch.setattr(evaluate, "test_errors", lambda cfg, model, *a: evaluated.append(model) or
                        test_errors(cfg, model, *a))
    result = evaluate.main(["--run-dir", str(out)])
    assert result["variant"] == "WS-RAM+q+c" and result["test_error"] == final["test_error"]
    assert 0 <= result["test_error_random_glimpses"] <= 1
    last = max((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    weights = load_file(last / "model.safetensors")
    state = evaluated[0].state_dict()
    assert weights and all(torch.equal(state[k], v) for k, v in weights.items())  # the final weights


@pytest.mark.unit
def test_evaluate_uses_the_runs_own_dataset():
    """A run trained on another made task (the same-footing one) is evaluated on that task's test set."""
    cfg = dataclasses.replace(get_config("smoke"), dataset="cluttered-mnist", canvas=64, test_size=4)
    expected = train.build_datasets(cfg)[1]
    got = evaluate.test_set(cfg, 4)
    assert len(got) == 4 and torch.equal(got[0][0], expected[0][0]) and got[0][1] == expected[0][1]


@pytest.mark.smoke
def test_figures_from_logs(smoke_run, tmp_path):
    out, _ = smoke_run
    logs = tmp_path / "smoke-logs"
    for run in {**figures.FIG2_RUNS, **figures.FIG3_RUNS}:
        (logs / run).mkdir(parents=True)
        for seed in (0, 1):
            (logs / run / f"seed{seed}.jsonl").write_text((out / "metrics.jsonl").read_text())
    paths = figures.main(["--logs", str(logs)])
    assert [p.name for p in paths] == ["smoke-fig2.png", "smoke-fig3.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    curves = figures.main(["--logs", str(logs), "--training-curves"])
    assert [p.name for p in curves] == ["smoke-training-error.png"] and curves[0].stat().st_size > 10_000


@pytest.mark.smoke
def test_random_baseline_smoke_run(tmp_path):
    final = train.main(["--config", "smoke", "--output-dir", str(tmp_path), "--set", "policy=random"])
    assert not any(k.startswith("gvar_") for k in final) and 0 <= final["test_error"] <= 1


@pytest.mark.smoke
def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "papers/wsram/train.py", "--config", "smoke", "--output-dir",
                           str(tmp_path), "--set", "estimator=var", "--set", "use_q=true"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: use_q=true needs estimator=wsram (the inference network is trained by eq. 14)"]


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path):
    # Two CPU processes also on a one-GPU machine (--multi_gpu would ask for two GPUs there).
    env = dict(os.environ, ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "papers/wsram/train.py", "--config", "smoke", "--output-dir", str(tmp_path), "--set", "use_q=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "final_metrics.json").read_text())["steps"] == get_config("smoke").max_steps


@pytest.mark.smoke
def test_paper_config_trains_and_evaluates(tmp_path):
    """The §5.1 config unchanged but for its length and data sizes: 100 px canvases, 256-unit layers,
    M = 5, WS-RAM with its exploration heuristics."""
    overrides = ["max_steps=2", "train_size=64", "test_size=16", "train_probe_size=8", "grad_probes=2",
                 "log_every=1", "eval_every=0", "checkpoint_every=0"]
    final = train.main(["--config", "paper", "--output-dir", str(tmp_path),
                        *(a for o in overrides for a in ("--set", o))])
    assert final["steps"] == 2 and final["glimpses"] == 4 and 0 <= final["accuracy"] <= 1
    assert json.loads((tmp_path / "config.json").read_text())["canvas"] == 100
