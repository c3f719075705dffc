"""Moves a collated batch to the model's device."""
from mmengine.model import BaseDataPreprocessor

from dsvlm.registry import MODELS


@MODELS.register_module()
class VLMDataPreprocessor(BaseDataPreprocessor):
    """Moves the tensors of ``llava_collate``'s batch to the device.

    Images are already normalised by the dataset's image processor (the
    encoder's own HF processor), so nothing else happens here; the encoder
    casts ``pixel_values`` to its dtype.
    """

    def forward(self, data: dict, training: bool = False) -> dict:
        return self.cast_data(data)
