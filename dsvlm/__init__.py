"""dsvlm: LLaVA-style VLM training with diffusion supervision (DS-VLM)."""
from .version import __version__

__all__ = ['__version__']
