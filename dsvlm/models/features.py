"""What the VLM exposes to supervisors: the visual features of one batch."""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from torch import Tensor


@dataclass
class VisualFeatures:
    """Features of the images of a batch, as computed in the forward pass.

    Supervisors read these and nothing else of the model.  All tensors keep
    their autograd graph, so a loss on them reaches the encoder and connector.

    Attributes:
        pixel_values: the preprocessed images, ``[B, 3, H, W]``.
        encoder_hidden_states: ``hidden_states[0]`` is the patch embedding
            output and ``hidden_states[i]`` the output of encoder layer ``i``
            (1-based, as in the paper's "layers 8/16/24"), each ``[B, N, C]``.
        encoder_tokens: the tokens the connector reads (selected layer and
            tokens), ``[B, N', C]``.
        connector_output: the image features in the LLM embedding space
            ("text-modality" features), ``[B, N', D]``.
        has_image: ``[B]`` bool, False for text-only samples (their
            ``pixel_values`` are placeholders).
        image_mean, image_std: the normalisation the image processor applied
            to ``pixel_values`` (per RGB channel), when the model knows it.
    """
    pixel_values: Tensor
    encoder_hidden_states: Tuple[Tensor, ...]
    encoder_tokens: Tensor
    connector_output: Tensor
    has_image: Optional[Tensor] = None
    image_mean: Optional[Sequence[float]] = None
    image_std: Optional[Sequence[float]] = None

    def encoder_layers(self, layers: Sequence[int]) -> Tuple[Tensor, ...]:
        num = len(self.encoder_hidden_states) - 1
        for layer in layers:
            if not 0 <= layer <= num:
                raise ValueError(f'encoder layer {layer} does not exist: the '
                                 f'encoder has layers 1..{num} (0 is the '
                                 'patch embedding)')
        return tuple(self.encoder_hidden_states[i] for i in layers)
