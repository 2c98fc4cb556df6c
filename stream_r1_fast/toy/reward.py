"""The toy world's video reward model: VQ, MQ and TA heads on a small video network.

Behind :class:`stream_r1_fast.rewards.RewardModel`: ``rewards(video [B, T, 3, H, W] in [0, 1],
prompts)`` -> raw logits [B, 3] and their normalisation with shipped statistics; everything is
differentiable with respect to the pixels (Stream-R1's saliency back-propagates through it).

Network (~50k parameters): a per-frame conv encoder (input: RGB and the first and second
temporal differences) to an 8x8 feature map; two 3-D convolutions over time on those maps
(motion features); a few fixed, differentiable summary statistics (high-frequency and
temporal-difference energies) beside the learned features. Heads:
* VQ: per-frame appearance features, mean- and std-pooled over space and time -> logit (clean vs corrupted).
* MQ: the 3-D motion features, pooled -> logit (smooth vs jittery / frozen / teleporting).
* TA: a pooled video embedding (appearance + motion, mean and max) against the caption's
  word-slot tokens (:class:`ToyTextEncoder`) projected and averaged -> an MLP on both and their
  product; plus a linear term on a soft colour histogram of the pixels at the colours and
  background the caption names (without it the TA head stayed at chance in CPU-minutes of
  training) -> logit (matched vs mismatched caption).
Trained by ``scripts/toy/train_reward.py`` with a binary cross-entropy per axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from stream_r1_fast.rewards.base import RewardOutput, check_video, normalize

WEIGHTS = Path(__file__).parent / "weights"
WORLDS = ("v1", "v2")


class _CaptionWords:
    """Where a world's caption embedding names colours and the background: ``colors(text)``
    [B, K] and ``backdrops(text)`` [B, NB] (> 0 where named), beside the palette [K, 3] and the
    background colours [NB, 3] of that world."""

    def __init__(self, world: str):
        if world == "v1":
            from stream_r1_fast.toy.text import TEXT_DIM, ToyTextEncoder
            from stream_r1_fast.toy.world import BACKGROUNDS, COLORS, VOCABULARY

            self.encoder, self.text_dim = ToyTextEncoder(), TEXT_DIM
            self.palette = list(COLORS.values())
            self.backdrop_rgb = [[(a + b) / 2 for a, b in zip(*v)] for v in BACKGROUNDS.values()]
            words = [VOCABULARY.index(c) for c in COLORS], [VOCABULARY.index(n.split()[0]) for n in BACKGROUNDS]
            # word counts of the caption's word-slot tokens
            self._colors = lambda text: text[..., : len(VOCABULARY)].sum(1)[:, words[0]]
            self._backdrops = lambda text: text[..., : len(VOCABULARY)].sum(1)[:, words[1]]
        elif world == "v2":
            from stream_r1_fast.toy.text2 import GROUPS, TEXT_DIM, ObjectTokenEncoder
            from stream_r1_fast.toy.world2 import BACKGROUNDS, COLORS

            self.encoder, self.text_dim = ObjectTokenEncoder(), TEXT_DIM
            self.palette, self.backdrop_rgb = list(COLORS.values()), list(BACKGROUNDS.values())
            (c0, cs), (b0, bs) = GROUPS["color"], GROUPS["background"]
            # one-hots of the object tokens (summed) and of the background token
            self._colors = lambda text: text[..., c0:c0 + len(cs)].sum(1)
            self._backdrops = lambda text: text[..., b0:b0 + len(bs)].sum(1)
        else:
            raise ValueError(f"unknown toy world {world!r}; choose one of {WORLDS}")

    def colors(self, text: torch.Tensor) -> torch.Tensor:
        return self._colors(text)

    def backdrops(self, text: torch.Tensor) -> torch.Tensor:
        return self._backdrops(text)


class ToyRewardModel(nn.Module):
    """VQ / MQ / TA reward network for 32x32 toy videos (any T >= 3; H, W multiples of 4) of
    toy world ``world`` (v1 or v2: its caption encoder, palette and backgrounds)."""

    def __init__(self, width: int = 32, text_width: int = 32, world: str = "v1"):
        super().__init__()
        words = _CaptionWords(world)
        self.world, self._words = world, words
        c = width
        self.frame = nn.Sequential(
            nn.Conv2d(9, 16, 3, padding=1), nn.GELU(),
            nn.Conv2d(16, 16, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, c, 4, stride=2, padding=1), nn.GELU(),
        )
        m = c // 2
        self.motion = nn.Sequential(
            nn.Conv3d(c, m, 3, padding=1), nn.GELU(),
            nn.Conv3d(m, m, (3, 3, 3), padding=(0, 1, 1)), nn.GELU(),
        )
        self.vq_head = nn.Sequential(nn.Linear(2 * c + 2, c), nn.GELU(), nn.Linear(c, 1))
        self.mq_head = nn.Sequential(nn.Linear(2 * m + 6, c), nn.GELU(), nn.Linear(c, 1))
        self.text_proj = nn.Sequential(nn.Linear(words.text_dim, text_width), nn.GELU(), nn.Linear(text_width, text_width))
        self.video_proj = nn.Sequential(nn.Linear(2 * c + 2 * m, text_width), nn.GELU(), nn.Linear(text_width, text_width))
        self.ta_head = nn.Sequential(nn.Linear(3 * text_width, text_width), nn.GELU(), nn.Linear(text_width, 1))
        self.ta_palette = nn.Linear(3, 1)
        # v2's MQ target is the motion of the objects the caption names at the captioned speed,
        # so its MQ head also sees the caption (v1's MQ was caption-free).
        self.mq_text = (nn.Sequential(nn.Linear(2 * m + text_width, c), nn.GELU(), nn.Linear(c, 1))
                        if world == "v2" else None)
        # Zero start: a random start on these large (log-scale) inputs gives a badly miscalibrated
        # TA logit that the training (lr 10x the rest, see train_reward.py) must first undo.
        nn.init.zeros_(self.ta_palette.weight)
        nn.init.zeros_(self.ta_palette.bias)
        # Palette and background colours, and where their names sit in the text embedding.
        self.register_buffer("palette", torch.tensor(words.palette), persistent=False)
        self.register_buffer("backdrops", torch.tensor(words.backdrop_rgb), persistent=False)
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.ones(3))
        self.text = words.encoder
        # Variance-preserving init: with PyTorch's default the pooled features of a 5-layer stack
        # start ~1e-4 in scale and training stalls for hundreds of steps.
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """video [B, T, 3, H, W] in [0, 1]; text [B, Lt, TEXT_DIM] -> raw logits [B, 3]."""
        b, t = video.shape[:2]
        # Inputs per frame: RGB, first and second temporal differences (zero where undefined).
        d1 = torch.cat([torch.zeros_like(video[:, :1]), video[:, 1:] - video[:, :-1]], 1)
        d2 = torch.cat([torch.zeros_like(video[:, :1]), d1[:, 1:] - d1[:, :-1]], 1)
        x = torch.cat([video * 2 - 1, 4 * d1, 4 * d2], 2).flatten(0, 1)
        a = self.frame(x)  # [B*T, c, H/4, W/4]
        a = a.unflatten(0, (b, t)).transpose(1, 2)  # [B, c, T, h, w]
        m = self.motion(a)  # [B, c/2, T-2, h, w]
        # Fixed summary statistics (log scale) beside the learned features: high-frequency
        # energy (noise up, blur down) and temporal-difference energy (frozen: a frame-to-frame
        # difference of ~0 somewhere; jitter / teleport: large second differences).
        hf = (video - F.avg_pool2d(video.flatten(0, 1), 3, 1, 1, count_include_pad=False).unflatten(0, (b, t))).pow(2)
        hf = hf.mean((2, 3, 4))  # [B, T]
        e1 = d1[:, 1:].pow(2).mean((2, 3, 4))  # [B, T-1]
        e2 = d2[:, 2:].pow(2).mean((2, 3, 4))  # [B, T-2]
        log = lambda z: torch.log(z + 1e-6)  # noqa: E731
        vq_stats = torch.stack([log(hf.mean(1)), log(hf.amax(1))], 1)
        mq_stats = torch.stack([log(e1.mean(1)), log(e1.amin(1)), log(e1.amax(1)),
                                log(e2.mean(1)), log(e2.amax(1)), log(e2.median(1).values)], 1) / 10
        vq = self.vq_head(torch.cat([a.mean((2, 3, 4)), a.std((2, 3, 4)), vq_stats / 10], 1))
        motion = torch.cat([m.mean((2, 3, 4)), m.abs().amax(2).mean((2, 3))], 1)
        mq = self.mq_head(torch.cat([motion, mq_stats], 1))
        # TA: a video embedding (pooled appearance + motion) against the caption's tokens,
        # projected and averaged over the (non-empty) tokens.
        video_emb = self.video_proj(torch.cat([a.mean((2, 3, 4)), a.amax((2, 3, 4)), m.mean((2, 3, 4)), m.amax((2, 3, 4))], 1))
        words = (text.abs().sum(-1) > 0).float().unsqueeze(-1)  # [B, Lt, 1]
        text_emb = (self.text_proj(text) * words).sum(1) / words.sum(1).clamp_min(1)
        if self.mq_text is not None:
            mq = mq + self.mq_text(torch.cat([motion, text_emb], 1))
        ta = self.ta_head(torch.cat([video_emb, text_emb, video_emb * text_emb], 1))
        # Plus a palette term on a soft colour histogram of the pixels (log fraction of pixels
        # near each colour): the rarest colour the caption names, the most common colour it does
        # not name, and the background it names.
        named = (self._words.colors(text) > 0).float()
        colors = self._fraction_near(video, self.palette)  # [B, K]
        rarest_named = -torch.logsumexp(-colors * 4 - (1 - named) * 1e4, 1) / 4
        commonest_other = torch.logsumexp(colors * 4 - named * 1e4, 1) / 4
        backdrop = (self._words.backdrops(text) * self._fraction_near(video, self.backdrops)).sum(1)
        ta = ta + self.ta_palette(torch.stack([rarest_named, commonest_other, backdrop], 1))
        return torch.cat([vq, mq, ta], 1)

    @staticmethod
    def _fraction_near(video: torch.Tensor, colors: torch.Tensor, width: float = 0.05) -> torch.Tensor:
        """log fraction of pixels within ~``sqrt(width)`` of each colour: [B, T, 3, H, W], [K, 3] -> [B, K]."""
        d2 = (video.unsqueeze(2) - colors.view(1, 1, -1, 3, 1, 1)).pow(2).sum(3)  # [B, T, K, H, W]
        return torch.log(torch.exp(-d2 / width).mean((1, 3, 4)) + 1e-3)

    def rewards(self, video: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        check_video(video, prompts)
        raw = self(video, self.text(list(prompts)).to(video.device))
        return RewardOutput(raw, normalize(raw, self.mean, self.std))

    def save(self, path: str | Path, **metadata) -> None:
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"world": self.world, **{k: str(v) for k, v in metadata.items()}})

    @classmethod
    def from_file(cls, path: str | Path) -> "ToyRewardModel":
        """A saved reward model (its world from the file's metadata; v1 without one), frozen."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            world = (f.metadata() or {}).get("world", "v1")
        model = cls(world=world)
        model.load_state_dict(load_file(str(path)))
        return model.eval().requires_grad_(False)

    @classmethod
    def pretrained(cls, world: str = "v1") -> "ToyRewardModel":
        """The shipped reward model of ``world`` (``weights/[v2/]reward.safetensors``), frozen."""
        return cls.from_file(WEIGHTS / ("reward.safetensors" if world == "v1" else f"{world}/reward.safetensors"))
