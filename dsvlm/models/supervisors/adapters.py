"""Adapters: map one supervision feature to the UNet's cross-attention width.

``mlp`` (a linear layer, or an MLP with ``depth`` > 1) is the paper's
default; ``qformer`` is the Table 6 alternative: learned queries that
cross-attend to the feature tokens and return a fixed number of tokens.
"""
import torch
from torch import nn

ADAPTER_TYPES = ('mlp', 'qformer')


class MLPAdapter(nn.Module):
    """LayerNorm, then a linear layer (``depth=1``) or an MLP."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 1,
                 act: str = 'gelu'):
        super().__init__()
        layers = [nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU() if act == 'gelu' else nn.SiLU(),
                       nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class QFormerAdapter(nn.Module):
    """BLIP-2-style Q-Former: ``num_queries`` learned queries, ``depth``
    transformer decoder layers (self-attention over the queries,
    cross-attention to the feature tokens), then a projection."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32,
                 depth: int = 2, num_heads: int = 8, hidden_dim: int = None):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        if hidden_dim % num_heads:
            raise ValueError(f'qformer adapter: hidden_dim {hidden_dim} is '
                             f'not divisible by num_heads {num_heads}')
        self.queries = nn.Parameter(0.02 * torch.randn(num_queries, hidden_dim))
        self.in_proj = nn.Linear(in_dim, hidden_dim)
        layer = nn.TransformerDecoderLayer(
            hidden_dim, num_heads, dim_feedforward=4 * hidden_dim,
            dropout=0.0, activation='gelu', batch_first=True,
            norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, depth)
        self.out_proj = nn.Linear(hidden_dim, out_dim)

    def forward(self, x):
        memory = self.in_proj(x)
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.out_proj(self.decoder(queries, memory))


def build_adapter(cfg: dict, in_dim: int, out_dim: int) -> nn.Module:
    """``cfg``: ``dict(type='mlp', depth=1)`` or
    ``dict(type='qformer', num_queries=32, depth=2, num_heads=8)``."""
    cfg = dict(cfg)
    kind = cfg.pop('type', 'mlp')
    if kind == 'mlp':
        return MLPAdapter(in_dim, out_dim, **cfg)
    if kind == 'qformer':
        return QFormerAdapter(in_dim, out_dim, **cfg)
    raise ValueError(f'adapter type {kind!r}; choose one of '
                     f'{", ".join(ADAPTER_TYPES)}')
