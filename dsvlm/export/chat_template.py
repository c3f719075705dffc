"""A conversation template as a transformers chat template (Jinja).

The exported processor renders ``messages`` with it, and the result must be
the string the training pipeline tokenises for the same conversation
(:meth:`ConversationTemplate.segments` / ``generation_prompt`` after
:func:`~dsvlm.datasets.annotations.normalize_conversations`):

* a user turn is ``user_prefix + question + user_suffix``; an assistant
  turn ``assistant_prefix + answer_prefix + answer + stop_str +
  turn_suffix``; ``add_generation_prompt`` appends ``assistant_prefix``;
* the image goes to the front of the first user turn, as LLaVA's
  ``preprocess_multimodal`` moves it: ``('<image>\\n' + text without
  <image>).strip()``; an ``{"type": "image"}`` item and a literal
  ``<image>`` in string content are the same thing;
* ``strip_content`` templates (Llama-3) strip every turn;
* the BOS token is not written: the exported tokenizer adds it when the
  template wants it (see :mod:`dsvlm.export.hf_processor`).

``image_suffix`` is written between ``<image>`` and the newline after it.
The training pipeline tokenises the text after ``<image>`` as a string of
its own (as LLaVA's ``tokenizer_image_token``); transformers tokenises it as
the text after a special token.  The two agree for byte-level BPE, while a
SentencePiece (Metaspace, ``prepend_scheme='first'``) tokenizer prefixes
``▁`` only to a string of its own: ``image_suffix=' '`` gives that ``▁``
back (see :func:`~dsvlm.export.hf_processor.image_token_suffix`).

Only the first user turn may hold an image (LLaVA-1.5 takes one), and the
template's system prompt is fixed (a ``system`` message is an error).
"""
import json

from dsvlm.constants import DEFAULT_IMAGE_TOKEN
from dsvlm.datasets.templates import ConversationTemplate

_TEMPLATE = """\
{%- set ns = namespace(text='', first_user=true) -%}
{{- SYSTEM -}}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{- raise_exception('this model was trained with a fixed system prompt; '
    'a system message is not supported') -}}
{%- endif -%}
{%- set ns.text = '' -%}
{%- set state = namespace(has_image=false) -%}
{%- if message['content'] is string -%}
{%- set ns.text = message['content'] -%}
{%- else -%}
{%- for item in message['content'] -%}
{%- if item['type'] == 'image' -%}
{%- if state.has_image -%}
{{- raise_exception('LLaVA-1.5 takes one image per conversation') -}}
{%- endif -%}
{%- set state.has_image = true -%}
{%- elif item['type'] == 'text' -%}
{%- set ns.text = ns.text + item['text'] -%}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- if IMAGE in ns.text -%}{%- set state.has_image = true -%}{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if state.has_image -%}
{%- if not ns.first_user -%}
{{- raise_exception('the image must be in the first user message, as in '
    'training') -}}
{%- endif -%}
{%- set ns.text = (IMAGE + '\\n' + (ns.text.replace(IMAGE, '') | trim)) | trim -%}
{%- set ns.text = ns.text.replace(IMAGE + '\\n', IMAGE + IMAGE_SUFFIX + '\\n') -%}
{%- endif -%}
{%- if STRIP -%}{%- set ns.text = ns.text | trim -%}{%- endif -%}
{{- USER_PREFIX + ns.text + USER_SUFFIX -}}
{%- set ns.first_user = false -%}
{%- elif message['role'] == 'assistant' -%}
{%- if state.has_image -%}
{{- raise_exception('an assistant message cannot hold an image') -}}
{%- endif -%}
{%- if STRIP -%}{%- set ns.text = ns.text | trim -%}{%- endif -%}
{{- ASSISTANT_PREFIX + ANSWER_PREFIX + ns.text + STOP + TURN_SUFFIX -}}
{%- else -%}
{{- raise_exception('unknown role ' + message['role'] + '; use user and '
    'assistant') -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- ASSISTANT_PREFIX -}}{%- endif -%}
"""


def _literal(value) -> str:
    """A Jinja literal of ``value`` (JSON's escapes are Jinja's)."""
    return json.dumps(value)


def chat_template(template: ConversationTemplate,
                  image_suffix: str = '') -> str:
    """The Jinja chat template that writes ``template``'s conversations."""
    if template.image_only_prompt:
        raise ValueError(
            f'the {template.name!r} template (stage-1 captioning) is not a '
            'chat format: export a model trained with a chat template '
            '(vicuna_v1, llama3, qwen2)')
    values = dict(
        SYSTEM=template.system, IMAGE=DEFAULT_IMAGE_TOKEN,
        IMAGE_SUFFIX=image_suffix, STRIP=template.strip_content,
        USER_PREFIX=template.user_prefix, USER_SUFFIX=template.user_suffix,
        ASSISTANT_PREFIX=template.assistant_prefix,
        ANSWER_PREFIX=template.answer_prefix, STOP=template.stop_str,
        TURN_SUFFIX=template.turn_suffix)
    header = ''.join(f'{{%- set {name} = {_literal(value)} -%}}\n'
                     for name, value in values.items())
    return header + _TEMPLATE
