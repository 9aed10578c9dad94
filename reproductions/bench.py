"""Performance bench (issue #8): every target is a ratio measured side by side in one process.

    python reproductions/bench.py [--quick] [--device cpu|cuda] [--results-dir results] [--threads N]

1. Glimpse ops (retina, WS-RAM's RetinaSensor, grid crops, fixed patches) at batch 64: vectorised vs a
   per-sample Python loop (>= 20x faster, outputs checked bit-identical; RetinaSensor's float64 sums equal
   the loop's float32 pooling up to rounding) and vs a plain gather of the same output pixels with a
   precomputed index (<= 2x slower).
2. TNet inference (per-image latency and peak memory, torch.inference_mode): TNet with 0/1/2/3/5 locations
   vs BagNet-77 on the whole 224 px image (Table 1), and TNet with 4 locations at 896 px vs EfficientNet-B0
   at 896 px (Table 2); our ratio must reach the paper's (baseline / TNet, from results/papers/tnet.json).
3. Training throughput (images/s of a full step: forward, loss, backward, optimiser) of every paper's `cpu`
   config and of every paper-scale model (on CPU at batch 2; on CUDA at issue #18's batches in fp32, bf16
   and bf16 + channels_last), on random inputs (data loading excluded), plus the wall time of each
   `reproduce-<paper>` session from results/<paper>/cpu.json (<= 20 min).
4. torch features: channels_last vs the default layout for BagNet-77 and TNet (1 location); bf16
   autocast on GPU.
5. Loader throughput per core (issue #18): made ImageNet-like JPEGs (500 x 375, quality 90) decoded and
   put through the TNet and Saccader training transforms in this one process (one thread), images per
   CPU-second (>= 200); also decoding at reduced size (core.data.jpeg, PIL draft mode) for 77 px crops,
   and both transforms on a packed copy (core.data.pack: the files pre-resized to a 256 px shorter side).
6. torch.compile, which `accelerate launch --dynamo_backend inductor` applies to every paper's model: full
   training steps of the WS-RAM, TNet and BOED `cpu` configs compiled vs eager from the same weights, and the
   one-time compilation cost (not in --quick).

Timing: R rounds; in each round every candidate runs once, back to back, so a slow spell of a shared
machine hits all of them; a ratio is the median over rounds of the per-round ratio. --quick swaps the
paper-scale models for the CPU-scale configs (seconds, for tests) and writes <device>-quick.json; a full
run writes results/bench/<device>.json with provenance.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.glimpse import GridSpec, RetinaSensor, crop_and_resize, extract_patches, glimpse_top_left, retina
from core.metrics import measure_latency, peak_memory
from core.registry import get_paper
from core.results import REPO_ROOT, format_table, load_paper_values, load_result, provenance, save_result
from papers.tnet.config import get_config, parse_locs, total_locations

PAPERS = ("tnet", "saccader", "wsram", "boed", "wsram-captions")
SESSION_LIMIT_S = 20 * 60  # issue #8: each reproduce-<paper> session within 20 minutes on 2 CPU cores


# ----------------------------------------------------------------------------------------------------
# Side-by-side timing


def _once(fn, device: torch.device) -> float:
    """Seconds of one call under torch.inference_mode; on CUDA bracketed by synchronize."""
    if device.type == "cpu":
        return measure_latency(fn, warmup=0, repeats=1)["median_ms"] / 1e3
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(fns: dict, rounds: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """{name: [seconds per round]}: each round runs every candidate once, back to back, starting one
    candidate later than the round before, so no candidate always comes first (whoever comes first after
    a large free paid the page faults of fresh memory on glibc, which made a candidate up to 2x slower)."""
    for _ in range(warmup):
        for fn in fns.values():
            _once(fn, device)
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_once(fns[name], device))
    return times


def keep_freed_memory() -> None:
    """glibc: serve blocks up to 32 MiB from the heap and never give freed memory back to the system, so
    that the outputs of the timed calls (up to 27 MB) reuse pages instead of faulting fresh ones in."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD (its maximum on 64-bit)
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den] (the same round's pair)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def median_ms(times: list[float], per: int = 1) -> float:
    return 1e3 * statistics.median(times) / per


class Targets:
    """The met / not-met table: measured value against the required one (>= or <=)."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, id: str, measured: float, op: str, required: float, note: str = "") -> None:
        met = math.isfinite(measured) and (measured >= required if op == ">=" else measured <= required)
        self.rows.append({"id": id, "measured": round(measured, 3), "op": op, "required": round(required, 3),
                          "met": bool(met), "note": note})

    def table(self) -> str:
        rows = [[r["id"], r["measured"], f"{r['op']} {r['required']}", "met" if r["met"] else "NOT MET",
                 r["note"]] for r in self.rows]
        return format_table(["target", "measured", "required", "status", "note"], rows)


# ----------------------------------------------------------------------------------------------------
# 1. Glimpse ops: vectorised vs per-sample loop vs plain gather


def _loop_crop(img: torch.Tensor, r: int, c: int, h: int, w: int) -> torch.Tensor:
    """(C, H, W) -> (C, h, w) window with top-left (r, c), zeros outside: the naive per-glimpse copy."""
    C, H, W = img.shape
    out = img.new_zeros(C, h, w)
    r0, r1, c0, c1 = max(r, 0), min(r + h, H), max(c, 0), min(c + w, W)
    if r0 < r1 and c0 < c1:
        out[:, r0 - r:r1 - r, c0 - c:c1 - c] = img[:, r0:r1, c0:c1]
    return out


def loop_patches(images, top_left, size):
    tl = top_left.tolist()
    return torch.stack([torch.stack([_loop_crop(images[b], r, c, size, size) for r, c in tl[b]])
                        for b in range(len(images))])


def loop_crops(images, boxes, out_size):
    rows = []
    for b, per in enumerate(boxes.long().tolist()):
        crops = []
        for y0, x0, y1, x1 in per:
            crop = _loop_crop(images[b], y0, x0, y1 - y0, x1 - x0)
            if crop.shape[-2:] != (out_size, out_size):
                crop = F.interpolate(crop[None], size=(out_size, out_size), mode="bilinear",
                                     align_corners=False, antialias=False)[0]
            crops.append(crop)
        rows.append(torch.stack(crops))
    return torch.stack(rows)


def loop_retina(images, loc, size, num_scales, factor=2):
    H, W = images.shape[-2:]
    out = []
    for b in range(len(images)):
        scales = []
        for i in range(num_scales):
            side = size * factor**i
            r, c = glimpse_top_left(loc[b], side, (H, W)).tolist()
            crop = _loop_crop(images[b], r, c, side, side)
            scales.append(F.avg_pool2d(crop[None], factor**i)[0] if i else crop)
        out.append(torch.stack(scales))
    return torch.stack(out)


def loop_retina_sensor(images, loc, scale, index, size, factor=2):
    """Per glimpse: its image's window at its own scale, block-averaged (`retina` at one scale)."""
    H, W = images.shape[-2:]
    out = []
    for n in range(len(loc)):
        s = int(scale[n])
        side = size * factor**s
        r, c = glimpse_top_left(loc[n], side, (H, W)).tolist()
        crop = _loop_crop(images[int(index[n])], r, c, side, side)
        out.append(F.avg_pool2d(crop[None], factor**s)[0] if s else crop)
    return torch.stack(out)


def _flat_index(images, top_left, h, w, step=1):
    """(B, C, K*h'*w') flat indices of the (clamped) source pixels of K windows, every `step`-th pixel."""
    B, C, H, W = images.shape
    rows = (top_left[..., 0:1] + torch.arange(0, h, step, device=images.device)).clamp(0, H - 1)
    cols = (top_left[..., 1:2] + torch.arange(0, w, step, device=images.device)).clamp(0, W - 1)
    return ((rows * W)[..., :, None] + cols[..., None, :]).reshape(B, 1, -1).expand(B, C, -1)


def glimpse_cases(device, batch: int = 64):
    """(name, what, vectorised fn, loop fn, gather index, images) for each paper's glimpse op."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g).to(device)

    cases = []
    # WS-RAM cpu config: 60 px canvas, 12 px glimpses at 3 scales (12, 24, 48 px averaged down to 12).
    x, loc = rand(batch, 1, 60, 60), (rand(batch, 2) * 2.4 - 1.2)
    # Its output pixels: every 1st / 2nd / 4th pixel of the 12 / 24 / 48 px windows.
    index = torch.cat([_flat_index(x, glimpse_top_left(loc, 12 * 2**i, (60, 60))[:, None], 12 * 2**i,
                                   12 * 2**i, 2**i) for i in range(3)], 2)
    cases.append(("retina_wsram", "retina 60px, 3 scales of 12px", lambda: retina(x, loc, 12, 3),
                  lambda: loop_retina(x, loc, 12, 3), index, x))
    # WS-RAM's training step reads one scale per glimpse: M = 5 samples x T = 4 glimpses of every image,
    # each at a random scale, from one summed-area table of the batch (built inside the timed call, once per
    # step as in training). Output pixels: every 2^s-th pixel of each glimpse's window.
    per_image = 5 * 4
    image_of = torch.arange(batch, device=device).repeat_interleave(per_image)
    sample_loc = rand(batch * per_image, 2) * 2 - 1
    sample_scale = torch.randint(3, (batch * per_image,), generator=g).to(device)
    block = 2 ** sample_scale
    top_left = torch.stack([glimpse_top_left(sample_loc, 12 * 2**i, (60, 60)) for i in range(3)])[
        sample_scale, torch.arange(batch * per_image, device=device)]
    steps = torch.arange(12, device=device) * block[:, None]
    rows, cols = (top_left[:, :1] + steps).clamp(0, 59), (top_left[:, 1:] + steps).clamp(0, 59)
    sensor_index = (rows[:, :, None] * 60 + cols[:, None, :]).reshape(batch, 1, -1)
    cases.append(("retina_sensor_wsram", "RetinaSensor 60px, 5 x 4 glimpses an image, 1 of 3 scales of 12px",
                  lambda: RetinaSensor(x, 12, 3)(sample_loc, sample_scale, image_of),
                  lambda: loop_retina_sensor(x, sample_loc, sample_scale, image_of, 12), sensor_index, x))
    # TNet ImageNet level 2: 3 of the 5x5 grid's 77 px cells of a 224 px image (padded to 225), no resize.
    xi = rand(batch, 3, 224, 224)
    cells = GridSpec.from_fraction((224, 224), 5, 0.34375).boxes(device=device)
    boxes = cells[torch.randint(25, (batch, 3), generator=g).to(device)]
    cases.append(("crops_tnet_imagenet", "grid crops 224px, 3 of 5x5 77px cells",
                  lambda: crop_and_resize(xi, boxes, 77), lambda: loop_crops(xi, boxes, 77),
                  _flat_index(xi, boxes[..., :2].long(), 77, 77), xi))
    # fMoW-like resize: 2 of the 3x3 grid's half-image cells (112 px of 224) resized to 56 px (bilinear).
    cells2 = GridSpec.from_fraction((224, 224), 3, 0.5).boxes(device=device)
    boxes2 = cells2[torch.randint(9, (batch, 2), generator=g).to(device)]
    cases.append(("crops_resize", "grid crops 224px, 2 of 3x3 112px cells -> 56px",
                  lambda: crop_and_resize(xi, boxes2, 56), lambda: loop_crops(xi, boxes2, 56),
                  _flat_index(xi, boxes2[..., :2].long(), 112, 112, 2), xi))
    # BOED: 5 glimpses of 16 px on its 50x50 lattice; Saccader: 6 patches of 77 px on its 8 px grid.
    tl16 = torch.randint(0, 208, (batch, 5, 2), generator=g).to(device)
    cases.append(("patches_boed", "fixed patches 224px, 5 of 16px", lambda: extract_patches(xi, tl16, 16),
                  lambda: loop_patches(xi, tl16, 16), _flat_index(xi, tl16, 16, 16), xi))
    tl77 = (torch.randint(0, 19, (batch, 6, 2), generator=g) * 8).to(device)
    cases.append(("patches_saccader", "fixed patches 224px, 6 of 77px",
                  lambda: extract_patches(xi, tl77, 77), lambda: loop_patches(xi, tl77, 77),
                  _flat_index(xi, tl77, 77, 77), xi))
    return cases


def bench_glimpse(device, quick: bool, targets: Targets) -> dict:
    rounds = 3 if quick else 15
    out = {}
    for name, what, vectorised, loop, index, images in tqdm(glimpse_cases(device), desc="glimpse", unit="op"):
        with torch.inference_mode():
            v, ref = vectorised(), loop()
        exact = v.shape == ref.shape and torch.equal(v, ref)
        # RetinaSensor sums in float64 (a summed-area table), the loop in float32: equal up to rounding.
        close = v.shape == ref.shape and torch.allclose(v, ref, rtol=1e-5, atol=1e-6)
        if v.numel() != index.numel():
            raise UserError(f"bench bug: {name} gathers {index.numel()} pixels for {v.numel()} outputs")
        gather = partial(torch.gather, images.flatten(2), 2, index)
        times = interleaved({"vectorised": vectorised, "loop": loop, "gather": gather}, rounds, device)
        out[name] = {"what": what, "batch": images.shape[0], "output_pixels": v.numel(), "exact": exact,
                     "equal_up_to_rounding": close,
                     **{f"{k}_ms": median_ms(t) for k, t in times.items()},
                     "speedup_vs_loop": ratio(times, "loop", "vectorised"),
                     "slowdown_vs_gather": ratio(times, "vectorised", "gather")}
        targets.add(f"glimpse/{name}/vs_loop", out[name]["speedup_vs_loop"], ">=", 20.0,
                    "loop output identical" if exact else "loop output equal up to float32 rounding" if close
                    else "LOOP OUTPUT DIFFERS")
        targets.add(f"glimpse/{name}/vs_gather", out[name]["slowdown_vs_gather"], "<=", 2.0,
                    "x time of a plain gather of its output pixels")
    return out


# ----------------------------------------------------------------------------------------------------
# 2. TNet inference vs the fully convolutional baselines


def _tnet_models(quick: bool):
    """(Table 1 pair, Table 2 pair): (TNet config, baseline config, {our location setting: paper's})."""
    if quick:  # CPU-scale stand-ins with the same code paths (not the paper's models)
        return (("cpu", "cpu-bagnet", {"0": "0", "1": "1", "2": "2", "3": "3"}),
                ("cpu", "cpu-bagnet", {"2": "2-1"}))
    return (("imagenet", "imagenet-bagnet77", {s: s for s in ("0", "1", "2", "3", "5")}),
            ("fmow-896", "fmow-efficientnet-b0-896", {"2-1": "2-1"}))


def _paper_ratios(values: dict) -> dict:
    """Baseline / TNet latency and memory ratios of Tables 1 and 2, keyed like our settings."""
    t1 = {s: (values["imagenet/bagnet77/time"]["value"] / values[f"imagenet/tnet/time_locs{s}"]["value"],
              values["imagenet/bagnet77/memory"]["value"] / values[f"imagenet/tnet/memory_locs{s}"]["value"])
          for s in ("0", "1", "2", "3", "5")}
    eff, tnet = "fmow/efficientnet_b0_896", "fmow/tnet_896"
    t2 = {"2-1": (values[f"{eff}/time"]["value"] / values[f"{tnet}/time_locs4"]["value"],
                  values[f"{eff}/memory"]["value"] / values[f"{tnet}/memory_locs4"]["value"])}
    return {"table1": t1, "table2": t2}


def _tnet_candidates(tnet, base, x, settings, channels_last: bool, bf16: bool) -> dict:
    """{name: zero-argument call}: the baseline, TNet at every setting, and the item-4 variants."""
    levels = tnet.cfg.levels
    fns = {"baseline": partial(base, x)}
    for s in settings:
        fns[f"locs{s}"] = partial(tnet, x, parse_locs(s, levels))
    if channels_last:
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cl = torch.channels_last
        fns["baseline_channels_last"] = partial(copy.deepcopy(base).to(memory_format=cl), x_cl)
        fns["locs1_channels_last"] = partial(copy.deepcopy(tnet).to(memory_format=cl), x_cl,
                                             parse_locs("1", levels))
    if bf16:
        for name in ("baseline", f"locs{next(iter(settings))}"):
            fns[f"{name}_bf16"] = partial(_autocast_bf16, fns[name])
    return fns


def _autocast_bf16(fn):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return fn()


def bench_tnet(device, quick: bool, targets: Targets) -> dict:
    from papers.tnet.model import build_model

    paper = _paper_ratios(load_paper_values("tnet"))  # the paper's own numbers ship with the repository
    batch = 2 if device.type == "cpu" else 64  # the paper timed batches of 64 on a GPU (Table 1)
    rounds = 3 if quick else 5
    out = {"batch": batch, "rounds": rounds}
    pairs = zip(("table1", "table2"), _tnet_models(quick), strict=True)
    for table, (tnet_name, base_name, settings) in tqdm(list(pairs), desc="tnet inference", unit="table"):
        torch.manual_seed(0)
        tcfg, bcfg = get_config(tnet_name), get_config(base_name)
        tnet, base = build_model(tcfg).eval().to(device), build_model(bcfg).eval().to(device)
        x = torch.rand(batch, tcfg.channels, tcfg.image_size, tcfg.image_size, device=device) * 2 - 1
        fns = _tnet_candidates(tnet, base, x, settings, channels_last=table == "table1",
                               bf16=device.type == "cuda")
        times = interleaved(fns, rounds, device)
        memory = {name: peak_memory(fn) for name, fn in fns.items()
                  if not name.endswith(("_channels_last", "_bf16"))}
        entry = {"tnet_config": tnet_name, "baseline_config": base_name, "image_size": tcfg.image_size,
                 "latency_ms_per_image": {k: median_ms(t, batch) for k, t in times.items()},
                 "peak_memory_mb": {k: v / 2**20 for k, v in memory.items()}, "settings": {}}
        cite = "Table 1" if table == "table1" else "Table 2"
        for s, paper_key in settings.items():
            n = total_locations(parse_locs(s, tcfg.levels))
            lat = ratio(times, "baseline", f"locs{s}")
            mem = memory["baseline"] / max(memory[f"locs{s}"], 1)
            paper_lat, paper_mem = paper[table][paper_key]
            entry["settings"][s] = {"locations": n, "latency_ratio": lat, "memory_ratio": mem,
                                    "paper_latency_ratio": paper_lat, "paper_memory_ratio": paper_mem}
            label = f"{table}/{tnet_name}/{n}loc"
            targets.add(f"tnet/{label}/latency", lat, ">=", paper_lat,
                        f"{base_name} / TNet per-image time ({cite}: {paper_lat:.2f}x)")
            targets.add(f"tnet/{label}/memory", mem, ">=", paper_mem,
                        f"{base_name} / TNet peak memory ({cite}: {paper_mem:.2f}x)")
        for name in times:  # item 4: speed-up of each variant over the same model in the default setup
            for suffix in ("_channels_last", "_bf16"):
                if name.endswith(suffix):
                    entry[f"{name}_speedup"] = ratio(times, name.removesuffix(suffix), name)
        out[table] = entry
    return out


# ----------------------------------------------------------------------------------------------------
# 3. Training throughput


def _time_steps(model, optimizer, step_fn, batch, steps: int, device, bf16: bool = False) -> float:
    """Images per second of full training steps (forward, loss, backward, optimiser update); bf16: the
    forward and loss under bf16 autocast, as accelerate's mixed precision runs them."""
    model.train()
    images = batch[0]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 1):  # the first step (allocations, oneDNN primitives) is not timed
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = step_fn(model, batch, i + 1)
        loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(times[1:])


def _channels_last(model, data):
    """The model and its 4-D inputs in channels_last (what `channels_last=True` configs train in)."""
    cl = torch.channels_last
    data = tuple(x.contiguous(memory_format=cl) if x.ndim == 4 else x for x in data)
    return model.to(memory_format=cl), data


def _labels(n, classes, device):
    return torch.randint(classes, (n,), device=device)


def train_tnet(name: str, batch: int | None, device):
    paper = get_paper("tnet")
    cfg = paper.get_config(name)
    b = batch or cfg.batch_size
    model = paper.build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)  # as train.py's run()
    x = torch.rand(b, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    return (model, optimizer, paper.make_step_fn(cfg), (x, _labels(b, cfg.num_classes, device)), b,
            cfg.image_size)


def train_saccader(name: str, batch: int | None, device, stage: str = "policy"):
    from papers.saccader.train import make_optimizer

    paper = get_paper("saccader")
    cfg = paper.get_config(name)
    b = batch or cfg.batch_size
    model = paper.build_model(cfg).to(device)
    x = torch.rand(b, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    return (model, make_optimizer(cfg, model, stage), paper.make_step_fn(cfg, stage),
            (x, _labels(b, cfg.num_classes, device)), b, cfg.image_size)


def train_wsram(name: str, batch: int | None, device):
    paper = get_paper("wsram")
    cfg = paper.get_config(name)
    b = batch or cfg.batch_size
    model = paper.build_model(cfg).to(device)
    # Called as step 1 (never a multiple of log_every > 1), so the Fig. 2 probes, extra passes every
    # log_every steps that need the dataset, stay out of the per-step time.
    inner = paper.make_step_fn(cfg, None)

    def step_fn(model, batch, step):
        return inner(model, batch, 1)

    x = torch.rand(b, 1, cfg.canvas, cfg.canvas, device=device)
    return (model, torch.optim.Adam(model.parameters(), lr=cfg.lr), step_fn,
            (x, _labels(b, 10, device)), b, cfg.canvas)


def train_boed(name: str, batch: int | None, device):
    from papers.boed.splits import members

    paper = get_paper("boed")
    cfg = paper.get_config(name)
    b = batch or cfg.batch_size
    # every (condition, task, replicate) network of the supervision experiment, without forced locations
    model = paper.build_model(cfg, members=len(members(cfg))).to(device)
    x = torch.rand(b, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    y = torch.randint(2, (b, len(cfg.tasks)), device=device)
    index = torch.arange(b, device=device)
    return (model, torch.optim.Adam(model.parameters(), lr=cfg.lr), paper.make_step_fn(cfg), (x, y, index), b,
            cfg.image_size)


TRAINERS = {"tnet": train_tnet, "saccader": train_saccader, "wsram": train_wsram, "boed": train_boed}
# (paper, config, batch or None = the config's, extra kwargs): CPU-scale configs, then paper-scale models.
CPU_RUNS = [("tnet", "cpu", None, {}), ("saccader", "cpu", None, {"stage": "representation"}),
            ("saccader", "cpu", None, {"stage": "policy"}), ("wsram", "cpu", None, {}),
            ("boed", "cpu", None, {})]
PAPER_RUNS = [("tnet", "imagenet", 2, {}), ("tnet", "fmow", 2, {}),
              ("saccader", "imagenet", 2, {"stage": "policy"}), ("wsram", "paper", 2, {}),
              ("boed", "celeba-hq", 2, {})]
SMOKE_RUNS = [("tnet", "smoke", None, {}), ("saccader", "smoke", None, {"stage": "policy"}),
              ("wsram", "smoke", None, {}), ("boed", "smoke", None, {})]
# issue #18's GPU table: batch 64 at 224 px, WS-RAM 128; fp32, bf16, bf16 + channels_last
GPU_BATCH = {"tnet": 64, "saccader": 64, "wsram": 128, "boed": 64}
BF16_VARIANTS = ("bf16", "bf16_channels_last")


def training_plan(device, quick: bool) -> list[tuple[str, tuple, str]]:
    """(scale, run, variant) to time. Variants: "" (fp32), "bf16" and "bf16_channels_last" (the issue #18
    table). On CUDA the paper-scale models run at that table's batches (64; WS-RAM 128) in all three; on CPU
    at batch 2 in fp32 (--quick: one smoke run in each variant, so their code runs without a GPU)."""
    if quick:
        return [("smoke", r, "") for r in SMOKE_RUNS] + [("smoke", SMOKE_RUNS[0], v) for v in BF16_VARIANTS]
    if device.type != "cuda":
        return [("cpu", r, "") for r in CPU_RUNS] + [("paper", r, "") for r in PAPER_RUNS]
    paper_runs = [(paper, name, GPU_BATCH[paper], kw) for paper, name, _, kw in PAPER_RUNS]
    return [("cpu", r, "") for r in CPU_RUNS] + [("paper", r, v) for r in paper_runs
                                                  for v in ("", *BF16_VARIANTS)]


def bench_training(device, quick: bool) -> dict:
    out = {}
    for scale, (paper, name, batch, kw), variant in tqdm(training_plan(device, quick),
                                                          desc="training throughput", unit="config"):
        key = "/".join(part for part in (paper, name, kw.get("stage"), variant) if part)
        torch.manual_seed(0)
        try:
            model, optimizer, step_fn, data, b, size = TRAINERS[paper](name, batch, device, **kw)
            if variant.endswith("channels_last"):
                model, data = _channels_last(model, data)
            steps = 2 if quick or (scale == "paper" and device.type != "cuda") else 5
            start = time.perf_counter()
            bf16 = variant.startswith("bf16")
            rate = _time_steps(model, optimizer, step_fn, data, steps, device, bf16=bf16)
            out[key] = {"scale": scale, "batch": b, "image_size": size, "images_per_s": rate,
                        "seconds_per_step": b / rate, "timed_steps": steps,
                        "bench_seconds": time.perf_counter() - start}
        except (MemoryError, torch.OutOfMemoryError) as e:  # skip cleanly, say why
            out[key] = {"scale": scale, "skipped": f"out of memory: {str(e).splitlines()[0]}"}
        finally:
            model = optimizer = data = None
    return out


def bench_sessions(results_dir: Path, targets: Targets) -> dict:
    """Wall (and CPU) time of each stored `reproduce-<paper>` CPU session, from its provenance."""
    out = {}
    for paper in PAPERS:
        path = results_dir / paper / "cpu.json"
        if not path.is_file():
            out[paper] = {"note": "no stored result"}
            continue
        prov = load_result(path).get("provenance", {})
        wall = prov.get("wall_time_s")
        cores = prov.get("machine", {}).get("cpu_count")
        out[paper] = {"wall_time_s": wall, "cpu_time_s": prov.get("cpu_time_s"), "jobs": prov.get("jobs"),
                      "cpu_count": cores, "created_utc": prov.get("created_utc")}
        if wall is not None:
            targets.add(f"session/reproduce-{paper}", wall / 60, "<=", SESSION_LIMIT_S / 60,
                        f"minutes, results/{paper}/cpu.json ({cores} cores)")
        if prov.get("cpu_time_s") and cores:  # what the wall time is on idle cores (a shared box inflates it)
            targets.add(f"session/reproduce-{paper}/cpu_s_per_core", prov["cpu_time_s"] / cores / 60, "<=",
                        SESSION_LIMIT_S / 60, f"CPU-minutes per core, results/{paper}/cpu.json")
    return out


# ----------------------------------------------------------------------------------------------------
# 6. torch.compile, as `accelerate launch --dynamo_backend inductor` applies it


COMPILE_RUNS = [("wsram", "cpu"), ("tnet", "cpu"), ("boed", "cpu")]  # a recurrent step, two CNNs


def _training_step(model, optimizer, step_fn, batch, device) -> float:
    """Seconds of one full training step (forward, loss, backward, optimiser update)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss, _ = step_fn(model, batch, 1)
    loss.backward()
    optimizer.step()
    sync()
    return time.perf_counter() - start


def bench_compile(device, quick: bool) -> dict:
    """Training steps of the model wrapped in torch.compile (as accelerate's prepare does under
    `--dynamo_backend inductor`) against eager, from the same initial weights, alternating step by step over
    rounds: the median speed-up and the one-time cost of the first compiled steps (compilation, seconds)."""
    plan = [("wsram", "smoke")] if quick else COMPILE_RUNS
    rounds = 3 if quick else 10
    out = {}
    for paper, name in tqdm(plan, desc="torch.compile", unit="config"):
        runs = {}
        for mode in ("eager", "compiled"):
            torch.manual_seed(0)
            model, optimizer, step_fn, data, _, _ = TRAINERS[paper](name, None, device)
            model.train()
            runs[mode] = [torch.compile(model) if mode == "compiled" else model, optimizer, step_fn, data]
        first = {mode: sum(_training_step(*run, device) for _ in range(2)) for mode, run in runs.items()}
        times = {mode: [] for mode in runs}
        for r in range(rounds):
            for mode in list(runs)[r % 2:] + list(runs)[:r % 2]:
                times[mode].append(_training_step(*runs[mode], device))
        out[f"{paper}/{name}"] = {"eager_step_ms": median_ms(times["eager"]),
                                  "compiled_step_ms": median_ms(times["compiled"]),
                                  "speedup": ratio(times, "eager", "compiled"),
                                  "compile_s": first["compiled"] - first["eager"], "rounds": rounds}
        runs = None
    return out


# ----------------------------------------------------------------------------------------------------
# 5. Loader throughput


LOADER_TARGET = 200.0  # images per CPU-second per core (issue #18)


def made_jpegs(n: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[bytes]:
    """n photo-like JPEGs (quality 90): smooth random colour fields plus fine noise, so the entropy coder
    and the DCT see work like a photograph's (pure noise would be slower, flat colour faster)."""
    import io

    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    w, h = size
    out = []
    for _ in range(n):
        field = F.interpolate(torch.rand(1, 3, h // 25, w // 25, generator=g), size=(h, w), mode="bicubic",
                              align_corners=False)[0]
        pixels = (field + 0.08 * torch.randn(3, h, w, generator=g)).clamp(0, 1).mul(255).byte()
        buf = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def loader_pipelines(files: list[bytes]) -> dict:
    """{name: (fn(jpeg bytes) -> training image, its input files)}: the papers' training transforms after a
    full decode, a 77 px Inception crop decoded at reduced size, and the training transforms on the files
    packed by `python -m core.data.pack` (shorter side 256 px; packing is the one-time preparation, done
    here, outside the timed function)."""
    from core.data.jpeg import decode_crop
    from core.data.pack import capped_jpeg
    from core.data.sources import decode_image
    from core.data.transforms import random_resized_crop_box, resize
    from papers.saccader import preprocess as saccader_preprocess
    from papers.tnet import preprocess as tnet_preprocess

    def full(transform):
        return lambda data: transform(decode_image({"bytes": data}, 3, "made jpeg"))

    def box(h, w):
        return random_resized_crop_box(h, w, scale=(0.85, 1.0), ratio=(0.5, 2.0))

    def full77(data):
        image = decode_image({"bytes": data}, 3, "made jpeg")
        top, left, h, w = box(*image.shape[-2:])
        return resize(image[:, top:top + h, left:left + w], (77, 77)).clamp_(0, 1)

    def draft77(data):
        crop, _ = decode_crop(data, (77, 77), box)
        return resize(crop, (77, 77)).clamp_(0, 1)

    packed = [capped_jpeg(data, 256, 90) for data in files]
    tnet, saccader = tnet_preprocess.TrainTransform(224), saccader_preprocess.TrainTransform(224)
    return {"tnet_train_224": (full(tnet), files), "saccader_train_224": (full(saccader), files),
            "crop77_full_decode": (full77, files), "crop77_draft_decode": (draft77, files),
            "tnet_train_224_packed256": (full(tnet), packed),
            "saccader_train_224_packed256": (full(saccader), packed)}


def bench_loader(quick: bool, targets: Targets) -> dict:
    """Images per CPU-second of this process for each pipeline (CPU time, so other jobs on a shared machine
    do not count), interleaved over rounds; one core's worth, as a DataLoader worker does it."""
    files = made_jpegs(8 if quick else 64)
    rounds = 2 if quick else 5
    pipelines = loader_pipelines(files)
    rates = {name: [] for name in pipelines}
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (torch.utils.data sets 1 thread per worker)
    for _ in range(rounds):
        for name, (fn, inputs) in pipelines.items():
            start = time.process_time()
            for data in inputs:
                fn(data)
            rates[name].append(len(inputs) / max(time.process_time() - start, 1e-9))
    torch.set_num_threads(threads)
    out = {"images": len(files), "image_size": [500, 375], "jpeg_quality": 90, "rounds": rounds,
           "torch_threads": 1,
           "images_per_cpu_s": {name: statistics.median(r) for name, r in rates.items()}}
    for name in ("tnet_train_224", "saccader_train_224"):
        targets.add(f"loader/{name}/per_core", out["images_per_cpu_s"][name], ">=", LOADER_TARGET,
                    "images per CPU-second: JPEG decode + the paper's training transform")
    return out


# ----------------------------------------------------------------------------------------------------


def run(quick: bool, device_name: str, results_dir: Path) -> dict:
    if device_name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    device = torch.device(device_name)
    keep_freed_memory()
    start = time.perf_counter()
    targets = Targets()
    sections = {}
    for name, fn in (("glimpse", lambda: bench_glimpse(device, quick, targets)),
                     ("tnet_inference", lambda: bench_tnet(device, quick, targets)),
                     ("training", lambda: bench_training(device, quick)),
                     ("sessions", lambda: bench_sessions(results_dir, targets)),
                     ("loader", lambda: bench_loader(quick, targets)),
                     # compiling takes a minute a model: --quick leaves it out (tests/test_bench.py, slow)
                     ("compile", lambda: {} if quick else bench_compile(device, quick))):
        t0 = time.perf_counter()
        sections[name] = fn()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    wall = time.perf_counter() - start
    result = {"bench": "issue #8", "device": device_name, "quick": quick,
              "torch_threads": torch.get_num_threads(),
              "provenance": provenance(wall_time_s=wall, device=device_name, quick=quick),
              "targets": targets.rows, **sections}
    path = results_dir / "bench" / f"{device_name}{'-quick' if quick else ''}.json"
    save_result(path, result)
    print(targets.table())
    for key, entry in sections["training"].items():
        shown = entry.get("skipped") or \
            f"{entry['images_per_s']:.2f} images/s ({entry['seconds_per_step']:.2f} s/step)"
        print(f"train {entry['scale']:<5} {key:<28} {shown}")
    met = sum(r["met"] for r in targets.rows)
    print(f"{met}/{len(targets.rows)} targets met; bench wall time {wall:.0f} s; wrote {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-scale stand-ins, a few rounds (seconds)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's, one per core); 1 on a machine shared with "
                             "other jobs, where waiting threads distort every timing")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    main_guard(run, args.quick, args.device, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
