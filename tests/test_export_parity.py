"""Export parity: the platform's model and its export, loaded through plain
transformers (``LlavaForConditionalGeneration`` + ``AutoProcessor``), give
the same pixel values, input ids, logits and greedy answer.

The reference side is the training pipeline (``LlavaDataset`` in test mode,
``llava_collate``, ``LlavaModel``); the other side is what lmms-eval and
VLMEvalKit do with an export: ``processor.apply_chat_template`` then
``processor(images=, text=)``, and ``model.generate``.  Models are random
weights of the real architectures scaled down (CLIP + Llama with Vicuna's
template and a SentencePiece-style tokenizer, CLIP + Llama-3, SigLIP +
Qwen2 with ChatML), tokenizers those of tests/reference_tokenizers.py.
"""
import json

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dsvlm.constants import IMAGE_TOKEN_INDEX
from dsvlm.datasets import LlavaDataset
from dsvlm.datasets.collate import llava_collate
from dsvlm.export import hf_export
from dsvlm.models.generation import generation_kwargs
from dsvlm.registry import MODELS
from reference_tokenizers import (llama3_tokenizer, llama_tokenizer,
                                  qwen2_tokenizer)

init_default_scope('dsvlm')

CLIP = dict(type='HFVisionEncoder', model_type='clip',
            config=dict(hidden_size=32, intermediate_size=64,
                        num_hidden_layers=3, num_attention_heads=2,
                        image_size=32, patch_size=8))
SIGLIP = dict(type='HFVisionEncoder', model_type='siglip',
              config=dict(hidden_size=32, intermediate_size=64,
                          num_hidden_layers=3, num_attention_heads=2,
                          image_size=28, patch_size=7,
                          hidden_act='gelu_pytorch_tanh',
                          layer_norm_eps=1e-6))
# Llama-2/Vicuna and Llama-3 (grouped-query attention, rope theta 5e5),
# Qwen2 (q/k/v biases, tied embeddings as Qwen2-0.5B/1.5B), scaled down
LLAMA = dict(model_type='llama', hidden_size=48, intermediate_size=96,
             num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512,
             rms_norm_eps=1e-5)
LLAMA3 = dict(LLAMA, num_key_value_heads=2, rope_theta=500000.0)
QWEN2 = dict(model_type='qwen2', hidden_size=48, intermediate_size=96,
             num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512,
             tie_word_embeddings=True, rms_norm_eps=1e-6)


def clip_processor():
    return dict(type='clip_image_processor', image_size=32)


def siglip_processor():
    """SigLIP-SO400M's processor (squash-resize, mean/std 0.5), at 28 px."""
    from transformers import SiglipImageProcessorPil
    return SiglipImageProcessorPil(size={'height': 28, 'width': 28},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)


FAMILIES = {
    'clip_vicuna': (CLIP, LLAMA, llama_tokenizer, 'vicuna_v1',
                    clip_processor),
    'clip_llama3': (CLIP, LLAMA3, llama3_tokenizer, 'llama3', clip_processor),
    'siglip_qwen2': (SIGLIP, QWEN2, qwen2_tokenizer, 'qwen2',
                     siglip_processor),
}

QUESTION = 'What is in the image?'
# (conversation in LLaVA's format with the last answer the one to predict,
#  the same conversation as chat messages, without that answer)
CONVERSATIONS = [
    ([('<image>\n' + QUESTION, 'A cat.')],
     [('user', [{'type': 'image'}, {'type': 'text', 'text': QUESTION}])]),
    # <image> after the text: LLaVA moves it to the front
    ([('Describe it briefly.\n<image>', 'ok')],
     [('user', [{'type': 'text', 'text': 'Describe it briefly.'},
                {'type': 'image'}])]),
    # an image-only first turn, then a second round with leading spaces,
    # newlines and unicode
    ([('<image>', ' A red  circle.\nAt the top.'),
      ('Und die Farbe? 日本 🙂', 'rot')],
     [('user', [{'type': 'image'}]),
      ('assistant', ' A red  circle.\nAt the top.'),
      ('user', 'Und die Farbe? 日本 🙂')]),
]


def _image(seed, size=(40, 20)):
    pixels = np.random.RandomState(seed).randint(0, 256, (*size[::-1], 3))
    return Image.fromarray(pixels.astype('uint8'))


def _messages(turns):
    return [dict(role=role, content=content) for role, content in turns]


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def exported(request, tmp_path_factory):
    """(family name, our model, its config, the export loaded back)."""
    encoder, llm, make_tokenizer, template, processor = \
        FAMILIES[request.param]
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    cfg = dict(type='LlavaModel', vision_encoder=dict(encoder),
               connector=dict(type='MLPConnector', depth=2),
               llm=dict(type='HFCausalLM',
                        config=dict(llm, vocab_size=len(tokenizer) + 8)),
               tokenizer=tokenizer, template=template,
               image_processor=processor(),
               generation_cfg=dict(max_new_tokens=8))
    model = MODELS.build(cfg).eval()
    out = tmp_path_factory.mktemp(request.param)
    hf, hf_processor = hf_export(model, cfg['image_processor'], template)
    hf.save_pretrained(out)
    hf_processor.save_pretrained(out)
    loaded = LlavaForConditionalGeneration.from_pretrained(out).eval()
    return (request.param, model, cfg, loaded, AutoProcessor.from_pretrained(
        out))


def _ours(model, cfg, tmp_path, image, rounds):
    """The training pipeline's test-mode batch of one sample."""
    image.save(tmp_path / 'image.png')
    conversations = [t for q, a in rounds for t in (
        {'from': 'human', 'value': q}, {'from': 'gpt', 'value': a})]
    with open(tmp_path / 'ann.json', 'w') as f:
        json.dump([dict(id='s0', image='image.png',
                        conversations=conversations)], f)
    dataset = LlavaDataset(tmp_path / 'ann.json', str(tmp_path),
                           cfg['tokenizer'], cfg['image_processor'],
                           cfg['template'], test_mode=True)
    return llava_collate([dataset[0]],
                         pad_token_id=cfg['tokenizer'].pad_token_id)


def _collapse(ids, image_token_id):
    """A run of image tokens as one ``IMAGE_TOKEN_INDEX``."""
    out = []
    for i in ids:
        if i == image_token_id:
            if out and out[-1] == IMAGE_TOKEN_INDEX:
                continue
            i = IMAGE_TOKEN_INDEX
        out.append(i)
    return out


def assert_parity(model, batch, hf, processor, image, prompt):
    """Pixels, ids, logits and greedy answer of ``model`` on ``batch`` (one
    sample) equal the export's on ``image`` and the rendered ``prompt``."""
    inputs = processor(images=image, text=prompt, return_tensors='pt')

    # pixels: LLaVA's pad-to-square in the mean colour, then the encoder's
    # resize and normalisation
    assert torch.equal(inputs['pixel_values'][0],
                       batch['inputs']['pixel_values'][0])
    # ids: the export expands <image> to one token per image feature
    image_token_id = hf.config.image_token_index
    ids = inputs['input_ids'][0].tolist()
    assert ids.count(image_token_id) == hf.config.image_seq_length
    assert _collapse(ids, image_token_id) == \
        batch['inputs']['input_ids'][0].tolist()

    with torch.no_grad():
        ours = model(batch['inputs'], batch['data_samples'], mode='tensor')
        theirs = hf(**inputs).logits
    assert theirs.shape[:2] == ours.shape[:2]
    torch.testing.assert_close(theirs[..., :ours.shape[-1]], ours,
                               rtol=1e-5, atol=1e-5)

    # greedy answer: the same tokens and text
    new_tokens = hf.generate(**inputs)[0, inputs['input_ids'].shape[1]:]
    features = model._encode_if_images(batch['inputs'])
    spliced = model._splice(batch['inputs'], batch['data_samples'],
                            features, 'left')
    our_tokens = model.llm.generate(
        spliced.inputs_embeds, spliced.attention_mask,
        **generation_kwargs(model.tokenizer, model.template,
                            model.generation_cfg))[0]
    assert new_tokens.tolist() == our_tokens.tolist()
    answer = model.predict(batch['inputs'], batch['data_samples'])
    assert processor.decode(new_tokens, skip_special_tokens=True).strip() \
        == answer[0]['pred_answer']
    return answer[0]['pred_answer']


@pytest.mark.parametrize('case', range(len(CONVERSATIONS)))
def test_export_matches_the_trained_model(exported, case, tmp_path):
    name, model, cfg, hf, processor = exported
    rounds, turns = CONVERSATIONS[case]
    image = _image(case, (40, 20) if case % 2 else (17, 31))
    batch = _ours(model, cfg, tmp_path, image, rounds)
    prompt = processor.apply_chat_template(_messages(turns),
                                           add_generation_prompt=True)
    assert prompt == batch['data_samples'][0]['prompt'].replace(
        '<image>\n', '<image>' + _suffix(name) + '\n')
    assert prompt == processor.tokenizer.apply_chat_template(
        _messages(turns), add_generation_prompt=True, tokenize=False)
    assert_parity(model, batch, hf, processor, image, prompt)


def _suffix(name):
    # SentencePiece (Metaspace) tokenizers: a space after <image> stands for
    # the '▁' that training's separate tokenisation of the text after the
    # image gives (see dsvlm/export/chat_template.py)
    return ' ' if name == 'clip_vicuna' else ''


def test_chat_template_with_images_in_the_messages(exported, tmp_path):
    """The one-call route (images inside the messages) gives the same ids
    as rendering and then processing."""
    name, model, cfg, hf, processor = exported
    image = _image(7)
    rounds, turns = CONVERSATIONS[0]
    batch = _ours(model, cfg, tmp_path, image, rounds)
    messages = _messages(turns)
    messages[0]['content'][0] = {'type': 'image', 'image': image}
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True,
        return_dict=True, return_tensors='pt')
    assert _collapse(inputs['input_ids'][0].tolist(),
                     hf.config.image_token_index) == \
        batch['inputs']['input_ids'][0].tolist()
    assert torch.equal(inputs['pixel_values'][0],
                       batch['inputs']['pixel_values'][0])


def test_export_is_plain_transformers_llava(exported):
    """The format's own switches say what training did."""
    name, model, cfg, hf, processor = exported
    encoder = model.vision_encoder
    assert hf.config.vision_feature_layer == encoder.select_layer == -2
    assert hf.config.vision_feature_select_strategy == (
        'full' if name == 'siglip_qwen2' else 'default')
    assert processor.image_processor.do_pad
    assert hf.generation_config.suppress_tokens == [
        hf.config.image_token_index]
