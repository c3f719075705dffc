"""Export to transformers' LLaVA format (``LlavaForConditionalGeneration``
and ``LlavaProcessor``), loadable with no dsvlm code."""
from .chat_template import chat_template
from .export import build_for_export, export_to_dir, hf_export
from .hf_llava import ExportError, llava_config, to_hf_llava
from .hf_processor import (build_llava_processor, export_tokenizer,
                           image_token_suffix, llava_image_processor)

__all__ = [
    'ExportError', 'build_for_export', 'build_llava_processor',
    'chat_template', 'export_to_dir', 'export_tokenizer', 'hf_export',
    'image_token_suffix', 'llava_config', 'llava_image_processor',
    'to_hf_llava'
]
