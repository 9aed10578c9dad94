"""Caption generation with multi-scale stochastic hard attention (WS-RAM §5.2), after Xu et al. 2015 [5].

A CNN runs once per image; the feature maps after its last `num_scales` stages are the scales (each stage
halves the map, so "choosing a layer is analogous to choosing a scale", §5.2). For word t the attention
network samples an action a_t = (layer l, location i within layer l) from

    p(a_t | y_<t-1, a_<t, I) = p(l | h_t-1) p(i | l, h_t-1),   p(i | l, h) = softmax_i v^T tanh(K_l[i] + W h)

where h_t-1 is the LSTM decoder state and K_l the layer's feature vectors projected to a common width (plus
a learned embedding of (layer, location), so the attended vector says where it was taken). As in [5] the
attention for word t is chosen before the decoder reads the preceding word y_t-1; then
    h_t = LSTM([E y_t-1, z_t], h_t-1),   p(y_t | ...) = softmax(L_o(E y_t-1 + L_h h_t + L_z z_t))  ([5]'s deep
output), with z_t = K_l[i] the attended vector. Unlike [5] the scale l is a random choice too.

Inference network q(a_t | y, ...) (§4.3, §5.2): the same form with its own parameters, given the (detached)
decoder state and features and the embedding of a target word: the one preceding word t ("previous", §5.2's
text: the prior has not read it yet) or word t itself ("next"). Detached inputs keep eq. 14 on q's own
parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.captions import Vocabulary, digit_scene_vocabulary
from core.errors import UserError

from .config import CaptionConfig

# The input statistics of torchvision's ImageNet models (images in [0, 1], RGB), for a pretrained encoder.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class MultiScaleCNN(nn.Module):
    """Stages of 3x3 conv + ReLU layers, each stage ending in a 2x max-pool; returns the last
    `num_scales` stage outputs, finest first."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], convs: tuple[int, ...], num_scales: int):
        super().__init__()
        stages, c = [], in_channels
        for width, n in zip(widths, convs, strict=True):
            layers = []
            for _ in range(n):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
                c = width
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
        self.stages = nn.ModuleList(stages)
        self.num_scales = num_scales
        self.out_channels = list(widths[-num_scales:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps[-self.num_scales:]


class SigmoidTanh(torch.autograd.Function):
    """tanh(x) as 2 sigmoid(2x) - 1 (within 3e-7 of torch.tanh in float32), with tanh's own backward. torch
    2.13's CPU tanh kernel takes ~7x sigmoid's time: on the cpu config's additive attention (5 x 32 x 189 x 32
    elements) it was 2.7-3.4 ms a call and, with its backward, ~40% of a training update's CPU time; this form
    takes about a third of that, and a 300-update WS-RAM+q+c run ~20% less CPU time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def attention_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh, through SigmoidTanh on CPU (GPU tanh kernels have no such cost)."""
    return SigmoidTanh.apply(x) if x.is_cpu else torch.tanh(x)


class Attention(nn.Module):
    """Factorised categorical over (layer, location): layer logits from the query, location logits by an
    additive score within each layer; returns joint log-probabilities over all locations of all layers."""

    def __init__(self, query_dim: int, key_dim: int, hidden: int, num_scales: int):
        super().__init__()
        self.key = nn.Linear(key_dim, hidden, bias=False)
        self.query = nn.Linear(query_dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.layer = nn.Linear(query_dim, num_scales)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        """Per-image keys (B, N, hidden), computed once per caption batch."""
        return self.key(values)

    def forward(self, keys: torch.Tensor, query: torch.Tensor, slices: list[slice]) -> torch.Tensor:
        """keys (B, N, hidden) for B images; query (M*B, query_dim), sample-major. Returns (M*B, N)."""
        m = query.shape[0] // keys.shape[0]
        q = self.query(query).view(m, keys.shape[0], 1, -1)
        scores = self.score(attention_tanh(keys.unsqueeze(0) + q)).squeeze(-1).flatten(0, 1)  # (M*B, N)
        layer_logp = F.log_softmax(self.layer(query), -1)
        return torch.cat([layer_logp[:, j:j + 1] + F.log_softmax(scores[:, s], -1)
                          for j, s in enumerate(slices)], -1)


class CaptionAttentionModel(nn.Module):
    """forward(images, captions, num_samples, proposal) samples M attention sequences per caption
    (teacher forcing) and returns, shaped (M, B): log p(y | a, I), log p(a | I) under the prior, and the
    log-density of the proposal ("prior" or "q") they were drawn from; generate() captions greedily or by beam
    search. With cfg.encoder_weights the CNN is frozen (train.py loads its weights), its input normalised."""

    def __init__(self, cfg: CaptionConfig, vocab: Vocabulary, in_channels: int):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        d, v = cfg.att_dim, len(vocab)
        self.cnn = MultiScaleCNN(in_channels, cfg.cnn_widths, cfg.convs_per_stage, cfg.num_scales)
        if cfg.encoder_weights:
            self.cnn.requires_grad_(False)
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
            if in_channels == 1:  # grey scenes: R = G = B
                mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
            # Not persistent: constants, so checkpoints hold the same keys with or without an encoder file.
            self.register_buffer("pixel_mean", mean.view(-1, 1, 1), persistent=False)
            self.register_buffer("pixel_std", std.view(-1, 1, 1), persistent=False)
        self.project = nn.ModuleList(nn.Conv2d(c, d, 1) for c in self.cnn.out_channels)
        sides = [cfg.image_size // 2 ** (len(cfg.cnn_widths) - cfg.num_scales + 1 + j)
                 for j in range(cfg.num_scales)]
        if min(sides) < 1:
            raise UserError(f"image_size {cfg.image_size} is too small for {len(cfg.cnn_widths)} poolings")
        self.where = nn.ParameterList(nn.Parameter(0.1 * torch.randn(s * s, d)) for s in sides)
        self.embed = nn.Embedding(v, cfg.embed)
        self.init_state = nn.Linear(d, 2 * cfg.hidden)
        self.lstm = nn.LSTMCell(cfg.embed + d, cfg.hidden)
        self.policy = Attention(cfg.hidden, d, d, cfg.num_scales)
        self.out_h, self.out_z = nn.Linear(cfg.hidden, cfg.embed), nn.Linear(d, cfg.embed)
        self.out = nn.Linear(cfg.embed, v)
        if cfg.use_q:
            self.q_embed = nn.Embedding(v, cfg.embed)
            self.q_attention = Attention(cfg.hidden + cfg.embed, d, cfg.q_hidden, cfg.num_scales)

    def train(self, mode: bool = True) -> CaptionAttentionModel:
        super().train(mode)
        if self.cfg.encoder_weights:
            self.cnn.eval()  # a frozen encoder is always used as it was pretrained
        return self

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[slice], torch.Tensor]:
        """(values (B, N, d) over all locations of all scales, one slice of N per scale, scale index (N,))."""
        if self.cfg.encoder_weights:
            images = (images - self.pixel_mean) / self.pixel_std
        values, slices, scale, start = [], [], [], 0
        for j, (fmap, proj) in enumerate(zip(self.cnn(images), self.project, strict=True)):
            v = proj(fmap).flatten(2).transpose(1, 2) + self.where[j]  # (B, H*W, d)
            values.append(v)
            slices.append(slice(start, start + v.shape[1]))
            scale.append(torch.full((v.shape[1],), j, dtype=torch.long, device=v.device))
            start += v.shape[1]
        return torch.cat(values, 1), slices, torch.cat(scale)

    def _initial_state(self, values: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = torch.tanh(self.init_state(values.mean(1))).chunk(2, -1)  # [5]: from the mean feature vector
        return h.repeat(m, 1), c.repeat(m, 1)

    def _word_logits(self, prev: torch.Tensor, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(prev) + self.out_h(h) + self.out_z(z))

    def forward(self, images: torch.Tensor, captions: torch.Tensor, num_samples: int,
                proposal: str = "prior") -> dict[str, torch.Tensor]:
        """captions: (B, L) <bos> w_1 .. <eos> <pad>...; word t is predicted from captions[:, :t]."""
        if proposal == "q" and not self.cfg.use_q:
            raise ValueError("proposal 'q' needs a model built with use_q=true")
        B, M = images.shape[0], num_samples
        values, slices, scale_of = self.features(images)
        keys = self.policy.keys(values)
        q_keys = self.q_attention.keys(values.detach()) if proposal == "q" else None
        length = int((captions != 0).sum(1).max())  # <bos> .. <eos> of the longest caption
        inputs, targets = captions[:, :length - 1].repeat(M, 1), captions[:, 1:length].repeat(M, 1)
        mask = (targets != 0).to(values.dtype)
        h, c = self._initial_state(values, M)
        rows = torch.arange(M * B, device=images.device) % B  # image of each sample-major row
        log_py = log_pa = log_prop = values.new_zeros(M * B)
        scales = []
        for t in range(length - 1):
            prior = self.policy(keys, h, slices)
            if proposal == "q":
                word = inputs[:, t] if self.cfg.q_word == "previous" else targets[:, t]
                q_in = torch.cat([h.detach(), self.q_embed(word)], -1)
                prop = self.q_attention(q_keys, q_in, slices)
            else:
                prop = prior.detach()
            where = torch.multinomial(prop.detach().exp(), 1).squeeze(1)
            log_pa = log_pa + mask[:, t] * prior.gather(1, where[:, None]).squeeze(1)
            log_prop = log_prop + mask[:, t] * prop.gather(1, where[:, None]).squeeze(1)
            z = values[rows, where]
            h, c = self.lstm(torch.cat([self.embed(inputs[:, t]), z], -1), (h, c))
            logp = F.log_softmax(self._word_logits(inputs[:, t], h, z), -1)
            log_py = log_py + mask[:, t] * logp.gather(1, targets[:, t:t + 1]).squeeze(1)
            scales.append(scale_of[where])
        scales = torch.stack(scales, 1).view(M, B, -1)
        return {"log_py": log_py.view(M, B), "log_pa": log_pa.view(M, B), "log_proposal": log_prop.view(M, B),
                "tokens": mask[:B].sum(1), "scales": scales, "mask": mask[:B].bool()}

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int,
                 beam_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy captions: at each step the prior's most probable (layer, location), then the most probable
        word (beam_size > 1: `beam_search`). Returns word ids (B, <= max_len + 1) (<eos> then <pad> after the
        end) and chosen scales (-1 after the end)."""
        if beam_size > 1:
            return self.beam_search(images, max_len, beam_size)
        values, slices, scale_of = self.features(images)
        keys = self.policy.keys(values)
        h, c = self._initial_state(values, 1)
        B = images.shape[0]
        prev = torch.full((B,), self.vocab.stoi["<bos>"], dtype=torch.long, device=images.device)
        done = torch.zeros(B, dtype=torch.bool, device=images.device)
        words, scales = [], []
        for _ in range(max_len + 1):
            where = self.policy(keys, h, slices).argmax(-1)
            z = values[torch.arange(B, device=images.device), where]
            h, c = self.lstm(torch.cat([self.embed(prev), z], -1), (h, c))
            prev = self._word_logits(prev, h, z).argmax(-1).masked_fill(done, 0)
            words.append(prev)
            scales.append(scale_of[where].masked_fill(done, -1))
            done = done | (prev == self.vocab.stoi["<eos>"])
            if done.all():
                break
        return torch.stack(words, 1), torch.stack(scales, 1)

    @torch.no_grad()
    def beam_search(self, images: torch.Tensor, max_len: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The best of k beams per image, as `generate` returns it. Every beam keeps its own LSTM state and
        attends where the prior is most probable, as greedy does; its score is the sum of its words'
        log-probabilities (not length-normalised). A beam that emitted <eos> has ended: it stays in the
        beam, extended only by <pad> at no cost. The search stops once every image's best beam has ended:
        scores only fall, so no other beam can overtake it. k = 1 is greedy up to ties."""
        values, slices, scale_of = self.features(images)
        keys = self.policy.keys(values)
        h, c = self._initial_state(values, k)  # sample-major rows as in forward: beam j of image b at j*B + b
        B, device = images.shape[0], images.device
        image = torch.arange(k * B, device=device) % B
        score = torch.full((k, B), -math.inf, device=device)
        score[0] = 0  # the beams start identical: extend only the first
        prev = torch.full((k * B,), self.vocab.stoi["<bos>"], dtype=torch.long, device=device)
        done = torch.zeros(k * B, dtype=torch.bool, device=device)
        words = scales = prev.new_zeros(k * B, 0)
        for _ in range(max_len + 1):
            where = self.policy(keys, h, slices).argmax(-1)
            z = values[image, where]
            h, c = self.lstm(torch.cat([self.embed(prev), z], -1), (h, c))
            logp = F.log_softmax(self._word_logits(prev, h, z), -1)
            logp[done] = -math.inf
            logp[done, 0] = 0  # an ended beam is extended only by <pad>, at no cost
            v = logp.shape[1]
            # The k best of the k*V extensions of each image's beams, best first.
            top, best = (score.reshape(-1, 1) + logp).view(k, B, v).transpose(0, 1).reshape(B, -1).topk(k, -1)
            score = top.t()
            source = ((best // v).t() * B + torch.arange(B, device=device)).flatten()  # the row each extends
            prev = (best % v).t().flatten()
            ended = done[source]
            words = torch.cat([words[source], prev[:, None]], 1)
            scales = torch.cat([scales[source], scale_of[where[source]].masked_fill(ended, -1)[:, None]], 1)
            h, c, done = h[source], c[source], ended | (prev == self.vocab.stoi["<eos>"])
            if done[:B].all():  # every image's best beam has ended
                break
        return words[:B], scales[:B]

    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, captions: torch.Tensor, num_samples: int) -> torch.Tensor:
        """(B,) log p(y | I) ~ log 1/M sum_m p(y | a^m, I), a^m from the prior: the eq. 9 bound (Fig. 4)."""
        log_py = self.forward(images, captions, num_samples, "prior")["log_py"]
        return torch.logsumexp(log_py, 0) - math.log(num_samples)


def build_model(cfg: CaptionConfig, vocab: Vocabulary | None = None,
                in_channels: int | None = None) -> CaptionAttentionModel:
    """The model for `cfg`; made digit scenes have a fixed vocabulary and 1 channel, a real dataset's
    vocabulary comes from its training captions (`vocab=`) and its images have 3 channels."""
    digits = cfg.dataset == "digit-captions"
    if vocab is None:
        if not digits:
            raise UserError(f"dataset {cfg.dataset!r}: pass the vocabulary built from its training captions")
        vocab = digit_scene_vocabulary()
    return CaptionAttentionModel(cfg, vocab, in_channels or (1 if digits else 3))
