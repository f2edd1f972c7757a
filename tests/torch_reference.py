"""PyTorch references of the networks, written from SPEC §1–3 with the official key names.

Independent of our JAX code: the resampling layers use the authors' formulation (a fixed
filter buffer applied by ``conv2d``/``conv_transpose2d``), not SPEC's closed forms, so a
parity test checks those too. Tests only: torch is never imported by the package.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _binomial(taps: list[float]) -> torch.Tensor:
    a = torch.tensor(taps, dtype=torch.float64)
    f = a[:, None] * a[None, :]
    return (f / f.sum()).float()


class Downsample(nn.Module):
    """Reflect-pad 1, depthwise [1,2,1]⊗[1,2,1]/16 conv, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("filt", _binomial([1, 2, 1])[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(
            F.pad(x, [1, 1, 1, 1], mode="reflect"), self.filt, stride=2, groups=x.shape[1]
        )


class Upsample(nn.Module):
    """Replicate-pad 1, depthwise transposed conv with [1,3,3,1]⊗[1,3,3,1]/64·4, stride 2,
    cropped — the authors' blur-upsampling."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer(
            "filt", (_binomial([1, 3, 3, 1]) * 4)[None, None].repeat(channels, 1, 1, 1)
        )

    def forward(self, x):
        y = F.conv_transpose2d(
            F.pad(x, [1, 1, 1, 1], mode="replicate"),
            self.filt,
            stride=2,
            padding=2,
            groups=x.shape[1],
        )
        return y[:, :, 1:, 1:][:, :, :-1, :-1]


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class TorchGenerator(nn.Module):
    def __init__(self, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        layers = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
            nn.Conv2d(ngf, 2 * ngf, 3, padding=1),
            nn.InstanceNorm2d(2 * ngf),
            nn.ReLU(True),
            Downsample(2 * ngf),
            nn.Conv2d(2 * ngf, 4 * ngf, 3, padding=1),
            nn.InstanceNorm2d(4 * ngf),
            nn.ReLU(True),
            Downsample(4 * ngf),
        ]
        layers += [ResnetBlock(4 * ngf) for _ in range(n_blocks)]
        layers += [
            Upsample(4 * ngf),
            nn.Conv2d(4 * ngf, 2 * ngf, 3, padding=1),
            nn.InstanceNorm2d(2 * ngf),
            nn.ReLU(True),
            Upsample(2 * ngf),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, 3, 7),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchViT(nn.Module):
    """timm-style ViT (keys ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i``,
    ``norm``, ``head``) returning SPEC §2's normed patch tokens."""

    def __init__(self, image_size, patch, dim, depth, heads, hidden, num_classes=10):
        super().__init__()
        self.image_size = image_size
        n = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.5)
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def resize(self, x):
        return F.interpolate(
            x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )

    def forward(self, x, layers=(1, 3, 5)):
        x = self.patch_embed(self.resize(x))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        outs = {}
        for i in range(max(layers) + 1):
            x = self.blocks[i](x)
            if i in layers:
                outs[i] = self.norm(x[:, 1:])
        return [outs[i] for i in layers]

    def local_tokens(self, x, centers, window, layers=(1, 3, 5)):
        grid = self.image_size // self.patch_embed.proj.kernel_size[0]
        x = self.patch_embed(self.resize(x)) + self.pos_embed[:, 1:]
        b, _, c = x.shape
        x = x.reshape(b, grid, grid, c)
        wins = []
        for ctr in centers:
            r, col = divmod(int(ctr), grid)
            r0 = min(max(r - window // 2, 0), grid - window)
            c0 = min(max(col - window // 2, 0), grid - window)
            wins.append(x[:, r0 : r0 + window, c0 : c0 + window].reshape(b, window * window, c))
        h = torch.stack(wins, 1).reshape(b * len(centers), window * window, c)
        outs = {}
        for i in range(max(layers) + 1):
            h = self.blocks[i](h)
            if i in layers:
                outs[i] = self.norm(h).reshape(b, len(centers), window * window, c)
        return [outs[i] for i in layers]


class TorchDiscriminator(nn.Module):
    def __init__(self, dim: int = 768):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, tokens):
        return self.linear2(F.gelu(self.linear1(tokens)))


def torch_multiscale(tokens: torch.Tensor, scales=(2, 4, 6, 8, 12)) -> torch.Tensor:
    """ROMA's region pooling written as explicit loops over windows."""
    b, n, c = tokens.shape
    g = int(round(n**0.5))
    grid = tokens.reshape(b, g, g, c)
    pooled = [
        grid[:, i : i + a + 1, j : j + a].mean(dim=(1, 2))
        for a in scales
        for i in range(0, g, a)
        for j in range(0, g, a)
    ]
    return torch.cat([tokens, torch.stack(pooled, 1)], 1)


def randomize_(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Ordinary-scale random weights (fan-in normal), so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module
