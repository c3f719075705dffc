"""Small in-memory tokenizers that behave like the real LLaVA base tokenizers.

No real tokenizer can be downloaded in the tests, so each function here trains
a small BPE (a few hundred merges, some 20 ms) on the built-in corpus
below and wraps it exactly as transformers wraps the released tokenizer:

* :func:`llama_tokenizer` -- Llama-2 / Vicuna-7B-v1.5 (SentencePiece BPE as
  transformers >= 5 builds ``LlamaTokenizer``: byte fallback, no normalizer,
  ``Metaspace(prepend_scheme='first', split=False)`` since Vicuna-v1.5's
  tokenizer_config has ``legacy: false``; ``<s>`` prepended);
* :func:`llama3_tokenizer` -- Meta-Llama-3-8B-Instruct (byte-level BPE with
  Llama-3's split regex, ``ignore_merges``, ``<|begin_of_text|>`` prepended,
  the released chat template);
* :func:`qwen2_tokenizer` -- Qwen2-7B-Instruct (byte-level BPE with Qwen2's
  split regex, NFC, no BOS, ChatML template with the default system prompt).

The merges differ from the real ones (so do the ids), but everything that
decides *where token boundaries fall and which tokens a prompt gets* is the
real configuration: pre-tokenization, the '▁' prefix rules, byte fallback,
special tokens, post-processors and chat templates. The training pre-tokenizer
never lets a merge cross a word/punctuation/digit boundary (as SentencePiece's
``split_by_whitespace``/``split_digits``/script splitting and the byte-level
regexes guarantee for the real vocabularies).

The trained vocabularies are cached (``functools.lru_cache``); every call
returns a *fresh* tokenizer object, so a test may change one (e.g. LLaVA sets
``pad_token = unk_token``) without affecting others.
"""
import functools
import json
import string

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        pre_tokenizers, processors, trainers)
from transformers import PreTrainedTokenizerFast
from transformers.models.llama.tokenization_llama import LlamaTokenizer
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

__all__ = [
    'CORPUS', 'LLAMA3_CHAT_TEMPLATE', 'LLAMA3_SPLIT_REGEX',
    'QWEN2_CHAT_TEMPLATE', 'QWEN2_SPLIT_REGEX', 'llama_tokenizer',
    'llama3_tokenizer', 'qwen2_tokenizer'
]

# A small English corpus in the style of LLaVA data: the Vicuna system
# prompt, questions/answers about images, chat-template words, punctuation,
# digits, newlines and a little non-ASCII text. Emoji and control characters
# are left out of the Llama vocabulary on purpose (byte fallback).
CORPUS = [
    'A chat between a curious user and an artificial intelligence assistant. '
    "The assistant gives helpful, detailed, and polite answers to the user's "
    'questions. USER: <image>\nWhat is in the image? ASSISTANT: A red circle '
    'at the top left.</s>',
    'USER: What colour is the square? ASSISTANT: The square is red.</s>'
    'USER: Where is it? ASSISTANT: Near the bottom right corner.</s>',
    'USER: hi ASSISTANT: yes</s> USER: Describe the image in detail. '
    'ASSISTANT: The image shows a small blue square, a green triangle and '
    'two yellow stars on a white background.',
    '<image>\nDescribe the image concisely.\nA photo of a cat sitting on a '
    'wooden table next to a cup of coffee.\n',
    '<image>\nProvide a brief description of the given image.\nThree people '
    'are walking along the beach at sunset.\n',
    'What is the man holding? He is holding an umbrella. Why? Because it is '
    'raining! Is it safe? Yes, it is safe; however, be careful...',
    'How many dogs are there? There are 2 dogs. In 1990, 345 people lived '
    'here; by 2023 it was 12,480 (about 36x more). Call 555-0199 at 7:30 pm.',
    'Answer the question using a single word or phrase. Yes. No. Two. '
    'Answer with the option\'s letter from the given choices directly. (A) '
    'red (B) blue (C) green [D] "yellow" {E} 50% & $3.50 #1 @home ~ok* + = / '
    '\\ | ^ ` < > _',
    'system user assistant You are a helpful assistant. You are a helpful '
    'language and vision assistant. You are able to understand the visual '
    'content that the user provides, and assist the user with a variety of '
    'tasks using natural language.',
    "I'm sure it's fine; we'll see, they've said you'd do it, we're here.",
    'The café serves crème brûlée; a naïve señor ordered piña colada. '
    'Über cool! 日本 is Japan, 日本語 is Japanese. 🙂 🚀',
    'Line one\nLine two\n\nLine four\tafter a tab.  Two  spaces   three.',
    'chat chat. A chat. hi hi yes yes USER: ASSISTANT: A chat. USER: hi',
    'system\nBe brief.\nuser\nWhat is it?\nassistant\nA cat.\nuser\nWhy?\n'
    'assistant\nBecause.\n',
    'The quick brown fox jumps over the lazy dog. Pack my box with five '
    'dozen liquor jugs. How vexingly quick daft zebras jump!',
]

# Meta-Llama-3's tokenizer.json pre-tokenizer regex; Qwen2's differs only in
# single digits (\p{N} instead of \p{N}{1,3}) -- it is also
# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The chat_template of meta-llama/Meta-Llama-3-8B-Instruct's
# tokenizer_config.json (the revision with the add_generation_prompt guard;
# the very first upload appended the assistant header unconditionally).
# Verbatim as quoted from the released file by distilabel
# (MAGPIE_TEMPLATES['meta-llama/Meta-Llama-3-8B-Instruct']) and by
# GoogleCloudPlatform/vertex-ai-samples (Llama-3-70B-Instruct tokenizer_config
# .json@a5a71a7527eac1d651bb145436c72026887fb68e, the same template).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# The chat_template of Qwen/Qwen2-7B-Instruct's tokenizer_config.json (the
# released file itself could not be read here): written from it and equal,
# character for character, to the copies of it in public code (training
# configs that set it as the Qwen2 chat template). It inserts the default
# system prompt when the first message is not a system message.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] "
    "!= 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' "
    "+ message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}")

_LLAMA_SPECIALS = ['<unk>', '<s>', '</s>']
_BYTE_TOKENS = [f'<0x{i:02X}>' for i in range(256)]
# Llama-3 reserves 256 special ids after the BPE vocabulary; the first ten, in
# their real order (128000...128009):
_LLAMA3_SPECIALS = [
    '<|begin_of_text|>', '<|end_of_text|>', '<|reserved_special_token_0|>',
    '<|reserved_special_token_1|>', '<|reserved_special_token_2|>',
    '<|reserved_special_token_3|>', '<|start_header_id|>',
    '<|end_header_id|>', '<|reserved_special_token_4|>', '<|eot_id|>'
]
_QWEN2_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']


def _trained_bpe(pre_tokenizer, vocab_size, initial_alphabet):
    """(vocab in id order, merges) of a BPE trained on CORPUS."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, show_progress=False,
        initial_alphabet=initial_alphabet, special_tokens=[])
    backend.train_from_iterator(CORPUS, trainer)
    model = json.loads(backend.to_str())['model']
    vocab = sorted(model['vocab'], key=model['vocab'].get)
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m)
              for m in model['merges']]
    return vocab, merges


# Vicuna's vocabulary has 'USER' (11889) but not '▁USER': ' USER' is
# ['▁US', 'ER'] (3148, 1001). So a round "USER: ..." tokenized on its own
# (with the '▁' prefix) has one token more than the same text right after
# '</s>' in the whole prompt (no prefix there with legacy=False) -- the
# difference LLaVA's preprocess_v1 subtracts ("i != 0 and not
# tokenizer.legacy"). The trained merges are adjusted to keep that property.
_NO_PIECE = {'▁USER'}
_FIRST_MERGES = [('U', 'S'), ('E', 'R'), ('▁', 'US'), ('US', 'ER')]


def _llama_piece_ok(piece):
    # Like Llama's SentencePiece vocabulary: no control characters (a newline
    # is <0x0A>) and no emoji; those go through byte fallback.
    return all(c not in '\n\r\t\x0b\x0c' and ord(c) < 0x1F000 for c in piece)


@functools.lru_cache(maxsize=None)
def _llama_vocab_merges():
    # Training pre-tokenizer: SentencePiece pieces never contain an inner
    # '▁', never mix letters with punctuation, and digits are single
    # (split_digits). At run time the whole text is one pre-token, as in the
    # real tokenizer (Metaspace split=False), and these merges reproduce
    # SentencePiece's segmentation style.
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='always',
                                 split=True),
        pre_tokenizers.Split(Regex(r'[^\p{L}\p{M}▁]'), behavior='isolated'),
    ])
    alphabet = [c for c in string.printable if not c.isspace()] + ['▁']
    vocab, merges = _trained_bpe(pre, 1000, alphabet)
    pieces = [p for p in vocab if _llama_piece_ok(p) and p not in _NO_PIECE]
    merges = [(a, b) for a, b in merges
              if _llama_piece_ok(a) and _llama_piece_ok(b)
              and a + b not in _NO_PIECE and (a, b) not in _FIRST_MERGES]
    merges = _FIRST_MERGES + merges
    pieces += [a + b for a, b in _FIRST_MERGES if a + b not in pieces]
    full = {tok: i for i, tok in enumerate(_LLAMA_SPECIALS + _BYTE_TOKENS)}
    for p in pieces:
        full.setdefault(p, len(full))
    return json.dumps(full), json.dumps(merges)


def llama_tokenizer():
    """Vicuna-7B-v1.5 / Llama-2 style tokenizer (a transformers 5
    ``LlamaTokenizer``).

    Built through the real ``LlamaTokenizer`` class, as
    ``LlamaTokenizer.from_pretrained('lmsys/vicuna-7b-v1.5')`` builds it from
    the SentencePiece model: BPE with ``byte_fallback=True`` and
    ``fuse_unk=True``; no normalizer; pre-tokenizer
    ``Metaspace('▁', prepend_scheme='first', split=False)`` (Vicuna-v1.5's
    tokenizer_config has ``legacy: false``; a legacy tokenizer would use
    ``prepend_scheme='always'``); decoder Replace('▁', ' '), ByteFallback,
    Fuse, Strip(' ', 1, 0); post-processor TemplateProcessing ``<s> $A``.
    ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<0x00>``..``<0xFF>`` 3..258.
    No pad token (LLaVA sets ``pad_token = unk_token`` itself).
    """
    vocab, merges = _llama_vocab_merges()
    tok = LlamaTokenizer(
        vocab=json.loads(vocab),
        merges=[tuple(m) for m in json.loads(merges)],
        unk_token='<unk>', bos_token='<s>', eos_token='</s>',
        add_bos_token=True, add_eos_token=False, legacy=False,
        clean_up_tokenization_spaces=False, model_max_length=4096,
        padding_side='right')
    return tok


@functools.lru_cache(maxsize=None)
def _byte_level_vocab_merges(split_regex):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior='isolated',
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    vocab, merges = _trained_bpe(pre, 1000,
                                 pre_tokenizers.ByteLevel.alphabet())
    return json.dumps(vocab), json.dumps(merges)


def llama3_tokenizer():
    """Meta-Llama-3-8B-Instruct style tokenizer.

    Mirrors its tokenizer.json (loaded by transformers as a plain
    ``PreTrainedTokenizerFast``): BPE with ``ignore_merges=True``; no
    normalizer; pre-tokenizer Split(LLAMA3_SPLIT_REGEX, isolated) +
    ByteLevel(add_prefix_space=False, use_regex=False); post-processor
    ByteLevel(trim_offsets=False) + TemplateProcessing
    ``<|begin_of_text|> $A``; ByteLevel decoder. bos ``<|begin_of_text|>``,
    eos ``<|eot_id|>`` (the Instruct config), no pad token and the released
    chat template. The released config has
    ``clean_up_tokenization_spaces: true``, which transformers 5 ignores for
    BPE tokenizers (with a warning), so it is False here: same behaviour.
    """
    vocab, merges = _byte_level_vocab_merges(LLAMA3_SPLIT_REGEX)
    vocab = {tok: i for i, tok in enumerate(json.loads(vocab))}
    merges = [tuple(m) for m in json.loads(merges)]
    backend = Tokenizer(models.BPE(
        vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False,
        byte_fallback=False))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior='isolated',
                             invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                 use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel(add_prefix_space=True,
                                         trim_offsets=True, use_regex=True)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False)
         for t in _LLAMA3_SPECIALS])
    bos_id = backend.token_to_id('<|begin_of_text|>')
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                             use_regex=True),
        processors.TemplateProcessing(
            single='<|begin_of_text|> $A',
            pair='<|begin_of_text|> $A <|begin_of_text|>:1 $B:1',
            special_tokens=[('<|begin_of_text|>', bos_id)]),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token='<|begin_of_text|>',
        eos_token='<|eot_id|>', clean_up_tokenization_spaces=False,
        model_input_names=['input_ids', 'attention_mask'],
        model_max_length=1000000000000000019884624838656,
        chat_template=LLAMA3_CHAT_TEMPLATE)


def qwen2_tokenizer():
    """Qwen2-7B-Instruct style tokenizer (transformers 5 ``Qwen2Tokenizer``).

    Built through the real ``Qwen2Tokenizer`` class (as from_pretrained does,
    passing the tokenizer.json post-processor ByteLevel(trim_offsets=False)):
    NFC normalizer; Split(QWEN2_SPLIT_REGEX, isolated) +
    ByteLevel(add_prefix_space=False, use_regex=False); ByteLevel decoder;
    specials ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``; no BOS
    (bos_token None, nothing prepended), eos ``<|im_end|>``, pad
    ``<|endoftext|>``, unk None, and the released chat template.
    """
    vocab, merges = _byte_level_vocab_merges(QWEN2_SPLIT_REGEX)
    vocab = json.loads(vocab)
    vocab = {tok: i for i, tok in enumerate(vocab + _QWEN2_SPECIALS)}
    merges = [tuple(m) for m in json.loads(merges)]
    return Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None,
        eos_token='<|im_end|>', pad_token='<|endoftext|>',
        additional_special_tokens=['<|im_start|>', '<|im_end|>'],
        add_prefix_space=False, errors='replace', split_special_tokens=False,
        clean_up_tokenization_spaces=False, model_max_length=131072,
        post_processor=processors.ByteLevel(
            add_prefix_space=False, trim_offsets=False, use_regex=False),
        chat_template=QWEN2_CHAT_TEMPLATE)
