from . import connectors, llms, recon_losses, supervisors, vision_encoders
from .data_preprocessor import VLMDataPreprocessor
from .features import VisualFeatures
from .llava import LlavaModel

__all__ = [
    'LlavaModel', 'VLMDataPreprocessor', 'VisualFeatures', 'connectors',
    'llms', 'vision_encoders', 'supervisors', 'recon_losses'
]
