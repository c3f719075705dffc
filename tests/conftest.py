"""Shared pytest fixtures."""
import logging

import pytest

SPECIAL_TOKENS = [
    '<s>', '</s>', '<unk>', '<pad>', '<|begin_of_text|>',
    '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
    '<|im_start|>', '<|im_end|>', '<|endoftext|>'
]
CORPUS = [
    'A chat between a curious user and an artificial intelligence assistant.',
    "The assistant gives helpful, detailed, and polite answers to the user's "
    'questions.',
    'USER: What colour is the square? ASSISTANT: The square is red.',
    'What is in the image? A red circle at the top left.',
    'system user assistant You are a helpful assistant.',
]


def build_test_tokenizer():
    """A byte-level BPE trained in memory: every string is encodable and
    decodes back exactly; the chat special tokens are single tokens."""
    from tokenizers import (Tokenizer, decoders, models, pre_tokenizers,
                            trainers)
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token='<s>', eos_token='</s>',
        unk_token='<unk>', pad_token='<pad>',
        clean_up_tokenization_spaces=False)


@pytest.fixture(scope='session')
def test_tokenizer():
    return build_test_tokenizer()


@pytest.fixture
def make_test_tokenizer():
    """Builds a fresh test tokenizer (for tests that modify it)."""
    return build_test_tokenizer


@pytest.fixture
def logged_warnings():
    """Messages of the WARNING (and above) records logged to MMEngine's
    current logger while the test runs (``print_log(logger='current')``)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()  # where print_log writes
    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


_PROCESS_GROUPS_STARTED = [0]


def _count_process_group_starts():
    """Count ``init_process_group`` calls made in this (pytest) process."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d
    if not dist.is_available() or getattr(dist.init_process_group,
                                          '_counted', False):
        return
    original = dist.init_process_group

    def counted(*args, **kwargs):
        _PROCESS_GROUPS_STARTED[0] += 1
        return original(*args, **kwargs)
    counted._counted = True
    dist.init_process_group = distributed_c10d.init_process_group = counted


_count_process_group_starts()


@pytest.fixture(scope='module', autouse=True)
def collect_process_groups():
    """After a test module that started a process group in this process:
    end it if still initialised and collect garbage now, in the process
    that owns its threads.  A gloo process group left as garbage would
    otherwise be destroyed by a garbage collection in a process forked
    later (a dataloader worker, a forked rank), where joining its threads
    hangs forever."""
    started = _PROCESS_GROUPS_STARTED[0]
    yield
    if _PROCESS_GROUPS_STARTED[0] == started:
        return
    import gc

    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
