from .hf_vision_encoder import HFVisionEncoder

__all__ = ['HFVisionEncoder']
