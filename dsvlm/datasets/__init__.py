"""The LLaVA data pipeline: annotations, templates, tokenisation, images,
the dataset, its sampler and collate function; benchmarks in VLMEvalKit's
TSV format."""
from .annotations import load_annotations, normalize_conversations
from .collate import llava_collate
from .errors import DataError, DataProblem
from .image_processing import (build_image_processor, clip_image_processor,
                               expand2square, preprocess_image,
                               pretrained_image_processor)
from .llava_dataset import LlavaDataset
from .samplers import LengthGroupedSampler
from .templates import TEMPLATES, ConversationTemplate, Segment, get_template
from .tokenization import tokenize_segments, tokenize_text
from .tokenizers import build_tokenizer, pretrained_tokenizer
from .vlmeval_tsv import VLMEvalTSVDataset

# last: the tiny world builds on the modules above (and registers its own
# dataset and tokenizer)
from . import tiny  # noqa: E402,F401
from .tiny.benchmarks import (TinyBenchmarkDataset,  # noqa: E402
                              write_tiny_benchmarks)

__all__ = [
    'load_annotations', 'normalize_conversations', 'llava_collate',
    'DataError', 'DataProblem', 'build_image_processor',
    'clip_image_processor', 'expand2square', 'preprocess_image',
    'pretrained_image_processor', 'LlavaDataset', 'LengthGroupedSampler',
    'TEMPLATES', 'ConversationTemplate', 'Segment', 'get_template',
    'tokenize_segments', 'tokenize_text', 'build_tokenizer',
    'pretrained_tokenizer', 'VLMEvalTSVDataset', 'TinyBenchmarkDataset',
    'write_tiny_benchmarks'
]
