"""The test references behave like the real things.

tests/reference_tokenizers.py builds Vicuna/Llama-2, Llama-3-Instruct and
Qwen2-Instruct style tokenizers in memory; tests/llava_reference.py loads the
official LLaVA prompt code (llava-torch) without importing its package. The
expected strings below are written out independently of both.
"""
import sys

import pytest

from llava_reference import (llava_reference_or_skip, reference_plain_ids,
                             reference_plain_sample, reference_vicuna_ids,
                             reference_vicuna_prompt, reference_vicuna_sample)
from reference_tokenizers import (llama3_tokenizer, llama_tokenizer,
                                  qwen2_tokenizer)

VICUNA_SYSTEM = ('A chat between a curious user and an artificial '
                 'intelligence assistant. The assistant gives helpful, '
                 "detailed, and polite answers to the user's questions.")
UNSEEN = 'Ωmega 🦙 ÷ ʘ\n\ttab'  # characters absent from the training corpus
TWO_ROUNDS = [
    {'from': 'human', 'value': 'What is it?\n<image>'},
    {'from': 'gpt', 'value': 'A red circle.'},
    {'from': 'human', 'value': 'Where?'},
    {'from': 'gpt', 'value': 'Top left.'},
]


def tokens(tok, text, **kwargs):
    return tok.convert_ids_to_tokens(tok(text, **kwargs).input_ids)


# ---------------------------------------------------------------- Llama-2


def test_llama_configuration():
    tok = llama_tokenizer()
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None  # Vicuna has none; LLaVA sets unk
    assert tok.legacy is False and tok.add_bos_token and not tok.add_eos_token
    assert tok.convert_tokens_to_ids(['<0x00>', '<0x0A>', '<0xFF>']) == [
        3, 13, 258]
    backend = tok.backend_tokenizer
    assert backend.normalizer is None
    pre = backend.pre_tokenizer
    assert (type(pre).__name__, pre.prepend_scheme, pre.split) == (
        'Metaspace', 'first', False)
    assert backend.model.byte_fallback
    # <s> is added once, in front; nothing at the end
    ids = tok('hi').input_ids
    assert ids[0] == 1 and ids.count(1) == 1 and ids[-1] != 2
    assert llama_tokenizer() is not tok  # fresh objects, cached vocabulary
    assert llama_tokenizer().get_vocab() == tok.get_vocab()


def test_llama_metaspace_lone_prefix():
    tok = llama_tokenizer()
    first = tokens(tok, 'questions. ', add_special_tokens=False)
    second = tokens(tok, 'USER:', add_special_tokens=False)
    whole = tokens(tok, 'questions. USER:', add_special_tokens=False)
    assert first[-1] == '▁' and first[0].startswith('▁')
    assert second[0].startswith('▁') and second[0] != '▁'
    assert '▁' not in whole
    assert first[:-1] + second == whole
    assert len(first) + len(second) == len(whole) + 1


def test_llama_newline_and_special_tokens():
    tok = llama_tokenizer()
    assert tokens(tok, '\nWhat', add_special_tokens=False)[:2] == [
        '▁', '<0x0A>']
    # no '▁' is prepended after a special token (prepend_scheme='first')
    after_eos = tokens(tok, 'a.</s>USER: b', add_special_tokens=False)
    assert after_eos[after_eos.index('</s>') + 1] == 'USER'
    # Vicuna's 'USER' vs ' USER' (['▁US', 'ER']): one token more with the
    # prefix -- what LLaVA's preprocess_v1 corrects for with legacy=False
    assert tokens(tok, 'USER:', add_special_tokens=False) == ['▁US', 'ER', ':']
    # '<0x0A>' typed in text is ordinary characters, not the byte token
    assert 13 not in tok('<0x0A>', add_special_tokens=False).input_ids


@pytest.mark.parametrize('build', [llama_tokenizer, llama3_tokenizer,
                                   qwen2_tokenizer])
def test_unseen_unicode_round_trips(build):
    tok = build()
    text = 'Le café naïve 日本 ' + UNSEEN
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    pieces = tok.convert_ids_to_tokens(ids)
    if build is llama_tokenizer:
        # byte fallback: the llama's four UTF-8 bytes, '\n' and '\t'
        for byte in ('<0xF0>', '<0x9F>', '<0xA6>', '<0x99>', '<0x0A>',
                     '<0x09>'):
            assert byte in pieces
        assert '▁café' in pieces  # trained pieces are multi-character
    else:
        assert 'Ċ' in pieces and 'ĉ' in pieces  # byte-level '\n', '\t'
    assert max(len(p) for p in pieces) > 3


def test_offsets_include_the_leading_space():
    """What return_offsets_mapping gives around spaces (documented for the
    dataset code): a word token's span starts at its space ('▁chat',
    'Ġchat' both cover ' chat'); the added BOS is (0, 0); Llama's first
    '▁A' covers only 'A' (the prepended '▁' is not in the text)."""
    text = 'A chat. USER: hi ASSISTANT: yes</s>'
    expected = {
        llama_tokenizer: [('<s>', (0, 0)), ('▁A', (0, 1)),
                          ('▁chat', (1, 6)), ('.', (6, 7))],
        llama3_tokenizer: [('<|begin_of_text|>', (0, 0)), ('A', (0, 1)),
                           ('Ġchat', (1, 6)), ('.', (6, 7))],
        qwen2_tokenizer: [('A', (0, 1)), ('Ġchat', (1, 6)), ('.', (6, 7))],
    }
    for build, head in expected.items():
        tok = build()
        enc = tok(text, return_offsets_mapping=True)
        pairs = list(zip(tok.convert_ids_to_tokens(enc.input_ids),
                         map(tuple, enc.offset_mapping)))
        assert pairs[:len(head)] == head, build.__name__
        for piece, (start, end) in pairs:
            if piece[0] in '▁Ġ' and start > 0:
                assert text[start] == ' ', (build.__name__, piece)
    tok = llama_tokenizer()
    enc = tok(text, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc.input_ids)[-1] == '</s>'
    assert tuple(enc.offset_mapping[-1]) == (31, 35)


# ----------------------------------------------------- Llama-3 and Qwen2


def test_llama3_chat_template():
    tok = llama3_tokenizer()
    assert tok.bos_token == '<|begin_of_text|>'
    assert tok.eos_token == '<|eot_id|>' and tok.pad_token is None
    assert tok('hi').input_ids[0] == tok.bos_token_id
    messages = [{'role': 'system', 'content': 'Be brief.'},
                {'role': 'user', 'content': ' What is it? '},
                {'role': 'assistant', 'content': 'A cat.'}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        '<|begin_of_text|>'
        '<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>'
        '<|start_header_id|>user<|end_header_id|>\n\nWhat is it?<|eot_id|>'
        '<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>')
    prompt = tok.apply_chat_template(messages[1:2], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == (
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n'
        'What is it?<|eot_id|>'
        '<|start_header_id|>assistant<|end_header_id|>\n\n')
    ids = tok.apply_chat_template(messages, tokenize=True)['input_ids']
    assert ids == tok(text, add_special_tokens=False).input_ids
    assert ids.count(tok.bos_token_id) == 1
    for special in ('<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'):
        assert tok.convert_tokens_to_ids(special) in ids


def test_qwen2_chat_template():
    tok = qwen2_tokenizer()
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.eos_token == '<|im_end|>' and tok.pad_token == '<|endoftext|>'
    assert tok('hi').input_ids == tok('hi', add_special_tokens=False).input_ids
    user = {'role': 'user', 'content': 'What is it?'}
    answer = {'role': 'assistant', 'content': 'A cat.'}
    text = tok.apply_chat_template([user, answer], tokenize=False)
    assert text == (
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
        '<|im_start|>user\nWhat is it?<|im_end|>\n'
        '<|im_start|>assistant\nA cat.<|im_end|>\n')
    system = {'role': 'system', 'content': 'Be brief.'}
    assert tok.apply_chat_template([system, user], tokenize=False,
                                   add_generation_prompt=True) == (
        '<|im_start|>system\nBe brief.<|im_end|>\n'
        '<|im_start|>user\nWhat is it?<|im_end|>\n<|im_start|>assistant\n')
    ids = tok.apply_chat_template([user, answer], tokenize=True)['input_ids']
    assert ids == tok(text).input_ids
    assert ids.count(tok.convert_tokens_to_ids('<|im_start|>')) == 3
    assert tok.convert_ids_to_tokens(ids)[:3] == ['<|im_start|>', 'system',
                                                  'Ċ']
    # NFC: a decomposed 'é' is the same as the composed one
    assert tok('cafe\u0301').input_ids == tok('caf\u00e9').input_ids


# ------------------------------------------------- official LLaVA reference


def test_llava_reference_loads_without_the_package():
    import llava_reference as module
    llava_reference_or_skip()
    before = {k: v for k, v in sys.modules.items() if k.startswith('llava')}
    ref = module.llava_reference.__wrapped__()  # uncached: load again
    after = {k: v for k, v in sys.modules.items() if k.startswith('llava')}
    assert after == before
    assert 'llava.model' not in sys.modules
    assert ref.version == '1.2.2.post1'
    assert (ref.IGNORE_INDEX, ref.IMAGE_TOKEN_INDEX) == (-100, -200)
    assert ref.preprocess_v1.__code__.co_filename.endswith(
        'llava/train/train.py')
    assert ref.IS_TOKENIZER_GREATER_THAN_0_14 is True


def test_vicuna_v1_prompt():
    ref = llava_reference_or_skip()
    conv = ref.conv_vicuna_v1.copy()
    conv.append_message(conv.roles[0], 'Hi?')
    conv.append_message(conv.roles[1], 'Hello.')
    assert conv.get_prompt() == (
        VICUNA_SYSTEM + ' USER: Hi? ASSISTANT: Hello.</s>')
    assert reference_vicuna_prompt(TWO_ROUNDS) == (
        VICUNA_SYSTEM + ' USER: <image>\nWhat is it? ASSISTANT: A red '
        'circle.</s>USER: Where? ASSISTANT: Top left.</s>')
    moved = ref.preprocess_multimodal(TWO_ROUNDS)
    assert moved[0]['value'] == '<image>\nWhat is it?'
    assert TWO_ROUNDS[0]['value'] == 'What is it?\n<image>'  # not modified


def test_tokenizer_image_token():
    ref = llava_reference_or_skip()
    tok = llama_tokenizer()
    prompt = 'USER: <image>\nWhat? ASSISTANT:'
    ids = ref.tokenizer_image_token(prompt, tok)
    left = tok('USER: ').input_ids
    right = tok('\nWhat? ASSISTANT:').input_ids
    assert ids == left + [-200] + right[1:]
    assert ids.count(-200) == 1 and ids.count(tok.bos_token_id) == 1
    # the lone '▁' of 'USER: ' and the '▁' + '<0x0A>' after the image
    at = ids.index(-200)
    assert tok.convert_ids_to_tokens(ids[at - 1:at]) == ['▁']
    assert tok.convert_ids_to_tokens(ids[at + 1:at + 3]) == ['▁', '<0x0A>']


def test_reference_vicuna_sample():
    llava_reference_or_skip()
    tok = llama_tokenizer()
    prompt, ids = reference_vicuna_ids(TWO_ROUNDS, tok)
    assert ids.count(-200) == 1 and ids[0] == tok.bos_token_id
    sample = reference_vicuna_sample(TWO_ROUNDS, tok)
    assert sample['warning'] == ''  # no "tokenization mismatch"
    assert sample['prompt'] == prompt and sample['input_ids'] == ids
    assert tok.pad_token is None  # the caller's tokenizer is left alone
    kept = [i for i, label in zip(ids, sample['labels']) if label != -100]
    assert tok.decode(kept) == 'A red circle.</s> Top left.</s>'
    text_only = [{'from': 'human', 'value': 'Hi?'},
                 {'from': 'gpt', 'value': 'Yes.'}]
    prompt, ids = reference_vicuna_ids(text_only, tok)
    assert ids == tok(prompt).input_ids and -200 not in ids
    sample = reference_vicuna_sample(text_only, tok)
    assert sample['warning'] == '' and sample['input_ids'] == ids


def test_reference_plain():
    llava_reference_or_skip()
    tok = llama_tokenizer()
    caption = [{'from': 'human', 'value': 'Describe it.\n<image>'},
               {'from': 'gpt', 'value': 'A red circle.'}]
    prompt, ids = reference_plain_ids(caption, tok)
    assert prompt == '<image>A red circle.\n'
    assert ids[:2] == [tok.bos_token_id, -200]
    assert ids[2:] == tok('A red circle.\n').input_ids[1:]
    labels = reference_plain_sample(caption, tok)['labels']
    assert labels[:2] == [-100, -100] and labels[2:] == ids[2:]


def test_missing_llava_torch_is_an_import_error(monkeypatch):
    import llava_reference as module
    monkeypatch.setattr(module, 'DISTRIBUTION', 'no-such-distribution-xyz')
    with pytest.raises(module.LlavaReferenceMissing, match='--no-deps'):
        module.llava_source_dir()
    assert issubclass(module.LlavaReferenceMissing, ImportError)
