"""A byte-level BPE tokenizer trained locally on the tiny world's texts.

Deterministic, built once under ``<world>/tokenizer/`` (atomically, like the
world itself) and loaded from there afterwards.  Byte-level BPE decodes
every text exactly as it was written, and it knows the special tokens of
every template, so ``plain``, ``vicuna_v1``, ``llama3`` and ``qwen2`` all
work with it.
"""
import json
from pathlib import Path

from dsvlm.registry import FUNCTIONS
from .atomic import build_once
from .shapes import ensure_shapes_world
from .texts import all_answers

SPECIAL_TOKENS = ('<unk>', '<s>', '</s>', '<pad>', '<|begin_of_text|>',
                  '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
                  '<|im_start|>', '<|im_end|>', '<|endoftext|>')
VOCAB_SIZE = 1000
TEMPLATE_REPEATS = 1000
PARAMS_FILE = 'dsvlm_tokenizer.json'
# answers of the benchmark-format questions: option letters, yes and no
FORMAT_ANSWERS = ('A', 'B', 'C', 'D', 'Yes', 'No')
# bump when the training corpus changes, so a stale tokenizer is refused
TOKENIZER_VERSION = 3
PARAMS = dict(vocab_size=VOCAB_SIZE, version=TOKENIZER_VERSION)


def _corpus(world: Path):
    """Every text of the world plus the templates' fixed strings."""
    from ..templates import TEMPLATES
    for name in ('pretrain.json', 'instruct.json', 'test.json'):
        with open(world / name) as f:
            for record in json.load(f):
                for turn in record['conversations']:
                    yield turn['value'].replace('<image>', '')
    # a world without benchmark-format questions keeps the tokenizer it had
    # before they existed
    with open(world / 'meta.json') as f:
        formats = json.load(f)['params'].get('benchmark_formats', 0)
    format_answers = list(FORMAT_ANSWERS) if formats else []
    for _ in range(TEMPLATE_REPEATS):  # frequent, so they merge into few tokens
        for template in TEMPLATES.values():
            for value in vars(template).values():
                if isinstance(value, str):
                    yield value
        # answers as templates write them: alone (llama3, qwen2) and after a
        # space (vicuna_v1), so that every answer word is one token
        for answer in all_answers() + format_answers:
            yield answer
            yield ' ' + answer


def _train(world: Path, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast
    tokenizer = Tokenizer(models.BPE(unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False,
                         special_tokens=list(SPECIAL_TOKENS),
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(world), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                   bos_token='<s>', eos_token='</s>',
                                   unk_token='<unk>', pad_token='<pad>')
    fast.save_pretrained(str(out))
    with open(out / PARAMS_FILE, 'w') as f:
        json.dump(dict(params=PARAMS), f)


def build_tiny_tokenizer(world_root):
    """The tokenizer of the world at ``world_root`` (trained on first use)."""
    from transformers import PreTrainedTokenizerFast
    world = Path(world_root)
    path = build_once(world / 'tokenizer', PARAMS,
                      lambda tmp: _train(world, Path(tmp)), PARAMS_FILE,
                      'tiny-world tokenizer')
    return PreTrainedTokenizerFast.from_pretrained(str(path))


@FUNCTIONS.register_module()
def tiny_tokenizer(data_root, **world):
    """Config entry: ``tokenizer=dict(type='tiny_tokenizer',
    data_root='data/tiny_shapes', **world_params)``; generates the world
    first if needed."""
    return build_tiny_tokenizer(ensure_shapes_world(data_root, **world))
