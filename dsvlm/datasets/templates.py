"""Conversation templates: a LLaVA conversation as supervised and
unsupervised text.

A template turns a normalised LLaVA ``conversations`` list (alternating
``human``/``gpt`` turns, see :mod:`dsvlm.datasets.annotations`) into
:class:`Segment` s.  Only what the assistant says is supervised: its answer
and the end-of-turn string after it, exactly as LLaVA masks its targets.

The conversation is tokenised as one string
(:mod:`dsvlm.datasets.tokenization`); segments only mark which characters
are supervised.  ``vicuna_v1`` writes ``ASSISTANT: answer</s>``; the space
belongs to the answer segment (``" answer</s>"``), because both a
byte-level BPE (``Ġanswer``) and Llama's SentencePiece (``▁answer``) put
that space into the answer's first token, and LLaVA supervises that token.

Templates:

* ``plain`` (LLaVA ``preprocess_plain``, stage-1 pretraining): the human turn
  is replaced by ``<image>``; ``<image>`` + caption + ``\\n``; BOS first.
* ``vicuna_v1`` (LLaVA-1.5): ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``;
  BOS first.
* ``llama3`` (LLaVA-NeXT's ``conv_llava_llama_3``, whose system prompt it
  uses): header tokens, ``<|eot_id|>`` ends a turn, the text starts with
  ``<|begin_of_text|>`` written into the template (Llama-3's own chat template
  does the same), so the tokenizer's BOS is not added again; every turn is
  stripped, as Llama-3-Instruct's template trims it.
* ``qwen2`` (ChatML, LLaVA-NeXT's ``conv_qwen``): ``<|im_start|>role\\n...
  <|im_end|>\\n``; the ``\\n`` after ``<|im_end|>`` is not supervised; no BOS.
"""
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import List, NamedTuple, Tuple

from dsvlm.constants import DEFAULT_IMAGE_TOKEN

HUMAN, GPT = 'human', 'gpt'

VICUNA_SYSTEM = (
    'A chat between a curious user and an artificial intelligence assistant. '
    "The assistant gives helpful, detailed, and polite answers to the user's "
    'questions.')
LLAMA3_SYSTEM = (
    'You are a helpful language and vision assistant. You are able to '
    'understand the visual content that the user provides, and assist the '
    'user with a variety of tasks using natural language.')
QWEN2_SYSTEM = 'You are a helpful assistant.'


class Segment(NamedTuple):
    """A piece of the conversation text and whether the loss sees it."""
    text: str
    supervised: bool


@dataclass(frozen=True)
class ConversationTemplate:
    """How one chat format writes a conversation.

    A round is written as ``user_prefix + question + user_suffix +
    assistant_prefix`` (unsupervised), ``answer_prefix + answer +
    stop_str`` (supervised) and ``turn_suffix`` (unsupervised).
    """
    name: str
    system: str  # everything before the first round
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # ends the generation prompt
    answer_prefix: str  # supervised text before the answer
    stop_str: str  # end of an assistant turn; generation stops at it
    turn_suffix: str = ''  # unsupervised text after ``stop_str``
    add_bos: bool = False  # prepend the tokenizer's BOS token
    image_only_prompt: bool = False  # ``plain``: the question becomes <image>
    strip_content: bool = False  # strip each turn (Llama-3's ``| trim``)

    def segments(self, conversations: List[dict]) -> List[Segment]:
        """Segments of a whole conversation (training)."""
        segments, rounds = self._prefix(), self._rounds(conversations)
        for question, answer in rounds:
            segments.append(Segment(self._ask(question), False))
            segments.append(
                Segment(self.answer_prefix + answer + self.stop_str, True))
            if self.turn_suffix:
                segments.append(Segment(self.turn_suffix, False))
        return segments

    def generation_prompt(
            self, conversations: List[dict]) -> Tuple[List[Segment], str]:
        """The conversation up to the last assistant prefix, and the answer
        left out (the ground truth of test mode)."""
        rounds = self._rounds(conversations)
        history = [t for q, a in rounds[:-1] for t in (
            {'from': HUMAN, 'value': q}, {'from': GPT, 'value': a})]
        segments = self.segments(history) if history else self._prefix()
        question, answer = rounds[-1]
        segments.append(Segment(self._ask(question), False))
        return segments, answer

    def _rounds(self, conversations: List[dict]) -> List[Tuple[str, str]]:
        rounds = _rounds(conversations)
        if self.strip_content:
            rounds = [(q.strip(), a.strip()) for q, a in rounds]
        if self.image_only_prompt and len(rounds) > 1:
            raise ValueError(f'the {self.name!r} template takes one '
                             f'human/gpt round, got {len(rounds)}')
        return rounds

    def _prefix(self) -> List[Segment]:
        return [Segment(self.system, False)] if self.system else []

    def _ask(self, question: str) -> str:
        if self.image_only_prompt:
            question = DEFAULT_IMAGE_TOKEN
        return (self.user_prefix + question + self.user_suffix +
                self.assistant_prefix)


def _rounds(conversations: List[dict]) -> List[Tuple[str, str]]:
    """``[(question, answer), ...]`` of an alternating human/gpt list."""
    roles = [turn['from'] for turn in conversations]
    if (len(roles) < 2 or len(roles) % 2
            or roles != [HUMAN, GPT] * (len(roles) // 2)):
        raise ValueError('a conversation must alternate human/gpt turns, '
                         'starting with human and ending with gpt; '
                         f'got {roles}')
    return [(conversations[i]['value'], conversations[i + 1]['value'])
            for i in range(0, len(conversations), 2)]


PLAIN = ConversationTemplate(
    name='plain', system='', user_prefix='', user_suffix='',
    assistant_prefix='', answer_prefix='', stop_str='\n', add_bos=True,
    image_only_prompt=True)

VICUNA_V1 = ConversationTemplate(
    name='vicuna_v1', system=VICUNA_SYSTEM + ' ', user_prefix='USER: ',
    user_suffix=' ', assistant_prefix='ASSISTANT:', answer_prefix=' ',
    stop_str='</s>', add_bos=True)

LLAMA3 = ConversationTemplate(
    name='llama3',
    system=('<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n'
            + LLAMA3_SYSTEM + '<|eot_id|>'),
    user_prefix='<|start_header_id|>user<|end_header_id|>\n\n',
    user_suffix='<|eot_id|>',
    assistant_prefix='<|start_header_id|>assistant<|end_header_id|>\n\n',
    answer_prefix='', stop_str='<|eot_id|>', strip_content=True)

QWEN2 = ConversationTemplate(
    name='qwen2',
    system=f'<|im_start|>system\n{QWEN2_SYSTEM}<|im_end|>\n',
    user_prefix='<|im_start|>user\n', user_suffix='<|im_end|>\n',
    assistant_prefix='<|im_start|>assistant\n', answer_prefix='',
    stop_str='<|im_end|>', turn_suffix='\n')

TEMPLATES = {t.name: t for t in (PLAIN, VICUNA_V1, LLAMA3, QWEN2)}


def get_template(spec) -> ConversationTemplate:
    """The template ``spec`` names.

    ``spec`` is a template name (``'vicuna_v1'``), a template instance
    (returned as is), or a dict ``dict(name='vicuna_v1', system='')`` that
    takes a named template and replaces some of its fields, e.g. a system
    prompt of one's own.
    """
    if isinstance(spec, ConversationTemplate):
        return spec
    overrides = {}
    if isinstance(spec, Mapping):
        overrides = dict(spec)
        if 'name' not in overrides:
            raise KeyError(f'a template dict needs `name` (one of '
                           f'{", ".join(sorted(TEMPLATES))}); got {spec}')
        spec = overrides.pop('name')
    if spec not in TEMPLATES:
        raise KeyError(f'unknown conversation template {spec!r}; valid '
                       f'templates: {", ".join(sorted(TEMPLATES))}')
    template = TEMPLATES[spec]
    unknown = sorted(set(overrides) - {f.name for f in fields(template)})
    if unknown:
        raise KeyError(f'unknown field(s) {unknown} for template {spec!r}; '
                       'valid: ' + ', '.join(f.name for f in fields(template)
                                             if f.name != 'name'))
    return replace(template, **overrides) if overrides else template
