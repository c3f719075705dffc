"""Token-for-token parity of ``LlavaDataset`` with the references that the
exported model and the evaluation toolkits follow.

* ``plain`` and ``vicuna_v1``: the official LLaVA code (llava-torch
  1.2.2.post1: ``preprocess_multimodal``, ``conv.get_prompt()``,
  ``tokenizer_image_token``, and ``preprocess_plain`` / ``preprocess_v1``
  for the labels), with a Llama-style SentencePiece (Metaspace) tokenizer.
* ``llama3`` and ``qwen2``: the tokenizer's own ``apply_chat_template``
  with the chat template Llama-3-Instruct / Qwen2-Instruct ship; labels
  must decode to exactly the answers and their end-of-turn tokens.

The tokenizers are built locally (tests/reference_tokenizers.py): their
vocabularies are small, but where they put token boundaries (spaces,
newlines, byte fallback, special tokens) is what the real ones do.
"""
import dataclasses
import json

import pytest

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.datasets import LlavaDataset
from dsvlm.datasets.errors import DataError
from dsvlm.datasets.templates import LLAMA3_SYSTEM
from llava_reference import (llava_reference_or_skip, reference_plain_sample,
                             reference_vicuna_sample)
from reference_tokenizers import (llama3_tokenizer, llama_tokenizer,
                                  qwen2_tokenizer)


def turns(*values):
    return [dict(zip(('from', 'value'), ('human' if i % 2 == 0 else 'gpt', v)))
            for i, v in enumerate(values)]


# Varied conversations: (has an image, turns)
CONVERSATIONS = {
    'one_round': (True, turns('<image>\nWhat is in the image?',
                              'A red circle on a white background.')),
    'multi_turn': (True, turns(
        '<image>\nWhat colour is the shape?', 'It is blue.',
        'And how many are there?', 'There are 3 shapes.',
        'Where is the largest one?', 'In the top left corner.')),
    'text_only': (False, turns('What is the capital of France?',
                               'Paris.', 'And of Japan?', 'Tokyo.')),
    'image_after_text': (True, turns('Describe this picture.\n<image>',
                                     'Two cats sleeping on a sofa.')),
    'image_only_turn': (True, turns('<image>', 'A dog running on grass.')),
    'leading_space_answer': (True, turns('<image>\nName the colour.',
                                         ' Green, mostly.')),
    'newlines_in_answer': (True, turns(
        '<image>\nList the objects.',
        '\n1. A cup\n2. A plate\n\nBoth are white.\n')),
    'unicode': (True, turns('<image>\nWas ist das? Café 日本',
                            'Ein Lama 🦙 vor dem Café, naïve Kunst.')),
    'trailing_spaces_question': (False, turns('Say hi.  ', 'Hi!')),
}
CAPTIONS = {  # plain: one round; LLaVA replaces the question by <image>
    'caption': turns('<image>\nDescribe.', 'a red circle on white'),
    'image_after_prompt': turns('Render a caption.\n<image>',
                                'two cats on a sofa'),
    'leading_space_caption': turns('<image>', ' a dog, running'),
    'unicode_caption': turns('<image>', 'café 日本 🦙'),
}


def records(convs):
    return [dict(id=name, conversations=c, **({'image': 'x.png'} if image
                                               else {}))
            for name, (image, c) in convs.items()]


def dataset(tmp_path, recs, tokenizer, template):
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(recs))
    return LlavaDataset(ann_file=str(ann), image_folder=str(tmp_path),
                        tokenizer=tokenizer, image_processor=None,
                        template=template, max_length=4096)


def ours(ds, idx):
    tokens = ds.tokenize(idx)[0]
    return tokens.input_ids, tokens.labels


# ---------------------------------------------------------- LLaVA's own code
@pytest.mark.parametrize('name', sorted(CONVERSATIONS))
def test_vicuna_v1_equals_the_official_llava_code(tmp_path, name):
    llava_reference_or_skip()
    tokenizer = llama_tokenizer()
    image, convs = CONVERSATIONS[name]
    ds = dataset(tmp_path, records({name: (image, convs)}), tokenizer,
                 'vicuna_v1')
    ref = reference_vicuna_sample(convs, tokenizer, has_image=image)
    assert ref['warning'] == ''  # LLaVA's own masking located every answer
    input_ids, labels = ours(ds, 0)
    assert input_ids == ref['input_ids']
    assert labels == ref['labels']
    assert labels.count(tokenizer.eos_token_id) == len(convs) // 2


@pytest.mark.parametrize('name', sorted(CAPTIONS))
def test_plain_equals_the_official_llava_code(tmp_path, name):
    llava_reference_or_skip()
    tokenizer = llama_tokenizer()
    convs = CAPTIONS[name]
    ds = dataset(tmp_path, records({name: (True, convs)}), tokenizer,
                 'plain')
    ref = reference_plain_sample(convs, tokenizer)
    input_ids, labels = ours(ds, 0)
    assert input_ids == ref['input_ids']
    assert labels == ref['labels']


def test_piecewise_tokenisation_would_differ():
    """The failure this guards against: the system prompt's final space
    tokenised on its own becomes a lone '▁' before ``USER``."""
    tokenizer = llama_tokenizer()
    system = 'The assistant gives helpful answers. '
    whole = tokenizer.encode(system + 'USER: hi', add_special_tokens=False)
    pieces = tokenizer.encode(system, add_special_tokens=False) + \
        tokenizer.encode('USER: hi', add_special_tokens=False)
    assert whole != pieces
    assert tokenizer.convert_ids_to_tokens(pieces).count('▁') == 1


# ------------------------------------------------------- chat templates
def chat_messages(convs, system=None):
    messages = [dict(role='system', content=system)] if system else []
    messages += [dict(role='user' if t['from'] == 'human' else 'assistant',
                      content=t['value']) for t in convs]
    return messages


def chat_template_ids(tokenizer, messages, add_generation_prompt=False):
    """transformers' rendering, tokenised as a whole; ``<image>`` splits the
    string into the image token (as the LLaVA processors expand it)."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = []
    for k, piece in enumerate(text.split('<image>')):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += tokenizer(piece, add_special_tokens=False)['input_ids']
    return ids


def moved_image(convs, image):
    """LLaVA's preprocess_multimodal, done in the dataset: the image leads
    the first turn, ``<image>\\n`` + the rest of the text."""
    if not image:
        return convs
    first = convs[0]['value'].replace('<image>', '').strip()
    return [dict(convs[0], value=('<image>\n' + first).strip())] + convs[1:]


CHAT = dict(llama3=(llama3_tokenizer, LLAMA3_SYSTEM, '<|eot_id|>', True),
            qwen2=(qwen2_tokenizer, None, '<|im_end|>', False))


@pytest.mark.parametrize('template', sorted(CHAT))
@pytest.mark.parametrize('name', sorted(CONVERSATIONS))
def test_chat_templates_equal_apply_chat_template(tmp_path, template, name):
    build, system, stop, trims = CHAT[template]
    tokenizer = build()
    image, convs = CONVERSATIONS[name]
    ds = dataset(tmp_path, records({name: (image, convs)}), tokenizer,
                 template)
    input_ids, labels = ours(ds, 0)
    messages = chat_messages(moved_image(convs, image), system)
    assert input_ids == chat_template_ids(tokenizer, messages)
    if not image:  # no image: transformers' own tokenisation, unchanged
        assert input_ids == tokenizer.apply_chat_template(
            messages, tokenize=True)['input_ids']
    # labels: each supervised run decodes to one answer + its end of turn
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        assert label in (IGNORE_INDEX, token)
        if label == IGNORE_INDEX and current:
            runs.append(current)
            current = []
        elif label != IGNORE_INDEX:
            current.append(label)
    runs += [current] if current else []
    answers = [t['value'] for t in convs[1::2]]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        expected = (answer.strip() if trims else answer) + stop
        decoded = tokenizer.decode(run)
        # a token that merges the prompt's last whitespace with the answer's
        # start is the answer's first token
        assert decoded.endswith(expected)
        assert decoded[:-len(expected)].strip() == ''


# ---------------------------------------------------- generation prompts
def eval_dataset(tmp_path, recs, tokenizer, template):
    ann = tmp_path / 'test.json'
    ann.write_text(json.dumps(recs))
    return LlavaDataset(ann_file=str(ann), image_folder=str(tmp_path),
                        tokenizer=tokenizer, image_processor=None,
                        template=template, test_mode=True)


@pytest.mark.parametrize('name', ['one_round', 'multi_turn', 'unicode'])
def test_vicuna_v1_generation_prompt_equals_llava_evaluation(tmp_path, name):
    """LLaVA's evaluation (model_vqa.py): the last assistant message None,
    ``conv.get_prompt()`` ends in ``ASSISTANT:``, then
    ``tokenizer_image_token``."""
    ref = llava_reference_or_skip()
    tokenizer = llama_tokenizer()
    image, convs = CONVERSATIONS[name]
    ds = eval_dataset(tmp_path, records({name: (image, convs)}), tokenizer,
                   'vicuna_v1')
    conv = ref.conv_vicuna_v1.copy()
    for turn in ref.preprocess_multimodal(convs)[:-1]:
        conv.append_message(conv.roles[turn['from'] == 'gpt'], turn['value'])
    conv.append_message(conv.roles[1], None)
    assert ds.tokenize(0)[0].input_ids == list(
        ref.tokenizer_image_token(conv.get_prompt(), tokenizer))


@pytest.mark.parametrize('template', sorted(CHAT))
@pytest.mark.parametrize('name', ['one_round', 'multi_turn', 'text_only'])
def test_chat_generation_prompt_equals_add_generation_prompt(
        tmp_path, template, name):
    build, system, _, _ = CHAT[template]
    tokenizer = build()
    image, convs = CONVERSATIONS[name]
    ds = eval_dataset(tmp_path, records({name: (image, convs)}), tokenizer,
                   template)
    messages = chat_messages(moved_image(convs, image)[:-1], system)
    assert ds.tokenize(0)[0].input_ids == chat_template_ids(
        tokenizer, messages, add_generation_prompt=True)


# ------------------------------------------------------------ never silent
def word_tokenizer():
    """Whitespace-separated words, unknown ones as one ``[UNK]`` token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.WordLevel(
        {'[UNK]': 0, 'Hi': 1, 'A:': 2, 'ok.': 3}, unk_token='[UNK]'))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend,
                                   unk_token='[UNK]')


def test_an_answer_that_ends_inside_a_token_is_an_error_naming_the_sample(
        tmp_path):
    """A template whose end of turn is ordinary text that runs into the next
    turn ("Hello.more" is one word): the supervised span cannot be located,
    and the sample says so instead of training on a shifted mask (LLaVA
    masks such a sample whole and prints a warning)."""
    recs = [dict(id='merged-42',
                 conversations=turns('Hi', 'Hello', 'more', 'ok'))]
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(recs))
    template = dict(name='vicuna_v1', system='', user_prefix='',
                    user_suffix=' ', assistant_prefix='A:', answer_prefix=' ',
                    stop_str='.', add_bos=False)
    ds = LlavaDataset(ann_file=str(ann), image_folder=None,
                      tokenizer=word_tokenizer(), image_processor=None,
                      template=template)
    with pytest.raises(DataError) as error:
        ds.tokenize(0)
    message = str(error.value)
    assert 'unlocated_answer' in message and "'merged-42'" in message
    assert str(ann) in message and "' Hello.'" in message
    # the same words with a boundary after the stop string are fine
    ds.template = dataclasses.replace(ds.template, user_prefix=' ')
    input_ids, labels = ours(ds, 0)
    assert [t for t in labels if t != IGNORE_INDEX] == [0, 3]  # UNK, 'ok.'
