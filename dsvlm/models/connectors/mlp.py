"""Connectors from vision features to the LLM embedding space."""
from torch import nn

from dsvlm.registry import CONNECTORS

ACTIVATIONS = {'gelu': nn.GELU, 'relu': nn.ReLU, 'silu': nn.SiLU}


@CONNECTORS.register_module()
class MLPConnector(nn.Module):
    """LLaVA's ``mlp{depth}x_{act}`` projector (LLaVA-1.5: depth 2, GELU).

    ``in_dim`` and ``out_dim`` are filled by the VLM from the encoder and
    the LLM when the config leaves them out.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2,
                 act: str = 'gelu'):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f'connector.act={act!r}; choose one of '
                             f'{", ".join(ACTIVATIONS)}')
        if depth < 1:
            raise ValueError(f'connector.depth must be >= 1, got {depth}')
        layers = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [ACTIVATIONS[act](), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x):
        return self.layers(x)


@CONNECTORS.register_module()
class LinearConnector(MLPConnector):
    """LLaVA-1.0's single linear projector."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim, depth=1)
