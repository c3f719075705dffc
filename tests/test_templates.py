"""Conversation templates: the full prompt text and the supervised spans.

Expected strings are written out literally here; the code's output is
decoded back to text with the (exact, byte-level) test tokenizer.
"""
import pytest

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.datasets.annotations import normalize_conversations
from dsvlm.datasets.templates import TEMPLATES, get_template
from dsvlm.datasets.tokenization import tokenize_segments

TWO_ROUNDS = {
    'id': 'x', 'image': 'a.png',
    'conversations': [
        {'from': 'human', 'value': 'What is it? <image>'},  # moved to front
        {'from': 'gpt', 'value': 'A red circle.'},
        {'from': 'human', 'value': 'Where?'},
        {'from': 'gpt', 'value': 'Top left.'},
    ]}
CAPTION = {
    'id': 'c', 'image': 'a.png',
    'conversations': [
        {'from': 'human', 'value': 'Describe the image.\n<image>'},
        {'from': 'gpt', 'value': 'A red circle.'},
    ]}

VICUNA_SYSTEM = ('A chat between a curious user and an artificial '
                 'intelligence assistant. The assistant gives helpful, '
                 "detailed, and polite answers to the user's questions.")
LLAMA3_SYSTEM = ('You are a helpful language and vision assistant. You are '
                 'able to understand the visual content that the user '
                 'provides, and assist the user with a variety of tasks '
                 'using natural language.')
L3_USER = '<|start_header_id|>user<|end_header_id|>\n\n'
L3_ASSISTANT = '<|start_header_id|>assistant<|end_header_id|>\n\n'

# template: (record, full text incl. BOS, supervised spans)
EXPECTED = {
    'plain': (CAPTION, '<s><image>A red circle.\n', ['A red circle.\n']),
    'vicuna_v1': (
        TWO_ROUNDS,
        f'<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A red '
        'circle.</s>USER: Where? ASSISTANT: Top left.</s>',
        [' A red circle.</s>', ' Top left.</s>']),
    'llama3': (
        TWO_ROUNDS,
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n'
        f'{LLAMA3_SYSTEM}<|eot_id|>{L3_USER}<image>\nWhat is it?<|eot_id|>'
        f'{L3_ASSISTANT}A red circle.<|eot_id|>{L3_USER}Where?<|eot_id|>'
        f'{L3_ASSISTANT}Top left.<|eot_id|>',
        ['A red circle.<|eot_id|>', 'Top left.<|eot_id|>']),
    'qwen2': (
        TWO_ROUNDS,
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
        '<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n'
        '<|im_start|>assistant\nA red circle.<|im_end|>\n'
        '<|im_start|>user\nWhere?<|im_end|>\n'
        '<|im_start|>assistant\nTop left.<|im_end|>\n',
        ['A red circle.<|im_end|>', 'Top left.<|im_end|>']),
}

PROMPTS = {  # generation prompt (no BOS) and the answer left out
    'plain': (CAPTION, '<image>', 'A red circle.'),
    'vicuna_v1': (TWO_ROUNDS,
                  f'{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A '
                  'red circle.</s>USER: Where? ASSISTANT:', 'Top left.'),
    'llama3': (TWO_ROUNDS,
               '<|begin_of_text|><|start_header_id|>system<|end_header_id|>'
               f'\n\n{LLAMA3_SYSTEM}<|eot_id|>{L3_USER}<image>\nWhat is it?'
               f'<|eot_id|>{L3_ASSISTANT}A red circle.<|eot_id|>{L3_USER}'
               f'Where?<|eot_id|>{L3_ASSISTANT}', 'Top left.'),
    'qwen2': (TWO_ROUNDS,
              '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
              '<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n'
              '<|im_start|>assistant\nA red circle.<|im_end|>\n'
              '<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n',
              'Top left.'),
}


def decode(ids, tokenizer):
    """Text of ``ids`` with ``<image>`` for IMAGE_TOKEN_INDEX."""
    text, part = '', []
    for i in list(ids) + [None]:
        if i is None or i == IMAGE_TOKEN_INDEX:
            text += tokenizer.decode(part, skip_special_tokens=False)
            text += '<image>' if i is not None else ''
            part = []
        else:
            part.append(i)
    return text


def supervised_spans(labels, tokenizer):
    """Decoded maximal runs of supervised labels."""
    spans, run = [], []
    for label in list(labels) + [IGNORE_INDEX]:
        if label == IGNORE_INDEX:
            if run:
                spans.append(tokenizer.decode(run, skip_special_tokens=False))
            run = []
        else:
            run.append(label)
    return spans


def test_all_templates_have_expectations():
    assert set(TEMPLATES) == set(EXPECTED) == {
        'plain', 'vicuna_v1', 'llama3', 'qwen2'}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_template_text_and_masking(name, test_tokenizer):
    record, full_text, spans = EXPECTED[name]
    template = get_template(name)
    segments = template.segments(normalize_conversations(record))
    tokens = tokenize_segments(segments, test_tokenizer, template.add_bos)
    assert decode(tokens.input_ids, test_tokenizer) == full_text
    assert supervised_spans(tokens.labels, test_tokenizer) == spans
    # supervised labels are the input ids themselves; one ignored image token
    assert len(tokens.labels) == len(tokens.input_ids)
    assert all(label in (IGNORE_INDEX, i)
               for i, label in zip(tokens.input_ids, tokens.labels))
    assert tokens.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    image_pos = tokens.input_ids.index(IMAGE_TOKEN_INDEX)
    assert tokens.labels[image_pos] == IGNORE_INDEX
    assert not tokens.truncated


@pytest.mark.parametrize('name', sorted(PROMPTS))
def test_generation_prompt(name):
    record, prompt, answer = PROMPTS[name]
    template = get_template(name)
    segments, gt = template.generation_prompt(normalize_conversations(record))
    assert ''.join(s.text for s in segments) == prompt
    assert not any(s.supervised for s in segments[-1:])
    assert gt == answer


def test_stop_strings():
    assert {n: t.stop_str for n, t in TEMPLATES.items()} == {
        'plain': '\n', 'vicuna_v1': '</s>', 'llama3': '<|eot_id|>',
        'qwen2': '<|im_end|>'}


def test_unknown_template_lists_valid_names():
    with pytest.raises(KeyError) as info:
        get_template('vicuna_v2')
    message = str(info.value)
    assert 'vicuna_v2' in message
    for name in ('plain', 'vicuna_v1', 'llama3', 'qwen2'):
        assert name in message


def test_template_dict_replaces_fields():
    record = {'conversations': [
        {'from': 'human', 'value': '<image>\nWhat color?'},
        {'from': 'gpt', 'value': 'red'}]}
    convs = normalize_conversations(record)
    text = ''.join(s.text for s in get_template(
        dict(name='vicuna_v1', system='Be brief. ')).segments(convs))
    assert text == 'Be brief. USER: <image>\nWhat color? ASSISTANT: red</s>'
    bare = get_template(dict(name='vicuna_v1', system=''))
    assert ''.join(s.text for s in bare.segments(convs)) == (
        'USER: <image>\nWhat color? ASSISTANT: red</s>')
    assert bare.stop_str == '</s>' and bare.add_bos
    assert get_template('vicuna_v1').system.startswith('A chat')  # untouched
    with pytest.raises(KeyError, match='systm'):
        get_template(dict(name='vicuna_v1', systm=''))
    with pytest.raises(KeyError, match='needs `name`'):
        get_template(dict(system=''))
    with pytest.raises(KeyError, match='valid templates'):
        get_template(dict(name='vicuna', system=''))


def test_bad_role_order_is_rejected():
    convs = [{'from': 'gpt', 'value': 'a'}, {'from': 'human', 'value': 'q'}]
    with pytest.raises(ValueError, match='alternate'):
        get_template('vicuna_v1').segments(convs)


def test_plain_takes_one_round():
    with pytest.raises(ValueError, match='one'):
        get_template('plain').segments(
            normalize_conversations(TWO_ROUNDS))


def test_truncation_keeps_prefix_and_never_drops_the_image(test_tokenizer):
    template = get_template('vicuna_v1')
    segments = template.segments(normalize_conversations(TWO_ROUNDS))
    full = tokenize_segments(segments, test_tokenizer, True)
    cut = tokenize_segments(segments, test_tokenizer, True, max_length=40)
    assert cut.truncated and cut.num_tokens == len(full.input_ids) > 40
    assert cut.input_ids == full.input_ids[:40]
    assert cut.labels == full.labels[:40]
    image_pos = full.input_ids.index(IMAGE_TOKEN_INDEX)
    with pytest.raises(ValueError, match='cut the image'):
        tokenize_segments(segments, test_tokenizer, True, max_length=image_pos)
    # exactly enough room for the image token is fine
    kept = tokenize_segments(segments, test_tokenizer, True,
                             max_length=image_pos + 1)
    assert kept.input_ids[-1] == IMAGE_TOKEN_INDEX


@pytest.mark.parametrize('image_length', [1, 7, 576])
def test_truncation_counts_the_image_as_its_features(test_tokenizer,
                                                     image_length):
    """max_length counts spliced positions: the image token stands for
    ``image_length`` of them, so the text keeps max_length - image_length + 1
    tokens (and a sample that fits as text but not spliced is truncated)."""
    template = get_template('vicuna_v1')
    segments = template.segments(normalize_conversations(TWO_ROUNDS))
    full = tokenize_segments(segments, test_tokenizer, True)
    num_text = len(full.input_ids) - 1
    spliced = num_text + image_length
    whole = tokenize_segments(segments, test_tokenizer, True,
                              max_length=spliced, image_length=image_length)
    assert not whole.truncated and whole.input_ids == full.input_ids
    assert whole.num_tokens == spliced
    max_length = spliced - 3
    cut = tokenize_segments(segments, test_tokenizer, True,
                            max_length=max_length, image_length=image_length)
    assert cut.truncated and cut.num_tokens == spliced
    assert cut.input_ids == full.input_ids[:len(full.input_ids) - 3]
    assert len(cut.input_ids) - 1 + image_length == max_length
    assert cut.num_supervised == sum(x != IGNORE_INDEX for x in full.labels)
    assert cut.num_supervised_kept == sum(
        x != IGNORE_INDEX for x in full.labels[:len(cut.input_ids)])
    image_pos = full.input_ids.index(IMAGE_TOKEN_INDEX)
    fits = tokenize_segments(segments, test_tokenizer, True,
                             max_length=image_pos + image_length,
                             image_length=image_length)
    assert fits.input_ids == full.input_ids[:image_pos + 1]
    with pytest.raises(ValueError, match='cut the image'):
        tokenize_segments(segments, test_tokenizer, True,
                          max_length=image_pos + image_length - 1,
                          image_length=image_length)
