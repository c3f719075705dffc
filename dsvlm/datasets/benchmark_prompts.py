"""Benchmark questions as LLaVA-1.5 is asked them.

The strings are those of the evaluation code the LLaVA-1.5 numbers come
from:

* ``multiple_choice`` (MMBench, SEED-Bench...): VLMEvalKit's
  ``LLaVA.build_prompt`` (``vlmeval/vlm/llava/llava.py``), the same text as
  LLaVA's ``llava/eval/model_vqa_mmbench.py --single-pred-prompt``: the hint
  and a newline, the question, ``\\n{letter}. {option}`` per option, then
  ``\\nAnswer with the option's letter from the given choices directly.``,
  or ``\\n请直接回答选项字母。`` when the text holds Chinese (VLMEvalKit's
  ``cn_string``).  A row without options ends with ``\\nAnswer the question
  directly.`` (``\\n请直接回答问题。``), as in VLMEvalKit.
* ``yes_no`` (MME, POPE): the question without MME's trailing ``Please
  answer yes or no.``, then ``\\nAnswer the question using a single word or
  phrase.``: LLaVA's ``llava_mme.jsonl`` holds MME's questions so
  (``playground/data/eval/MME/convert_answer_to_mme.py`` removes the suffix
  and adds ``Please answer yes or no.`` back to look the ground truth up);
  lmms-eval's ``tasks/mme/utils.py`` reproduces it the same way.
* ``vqa`` (VQAv2, GQA, TextVQA): the question, then ``\\nAnswer the
  question using a single word or phrase.`` (LLaVA ``docs/Evaluation.md``,
  "Short-answer").
"""
import re
from typing import Dict, Iterable, Optional

PROMPT_STYLES = ('auto', 'multiple_choice', 'yes_no', 'vqa')

MCQ_INSTRUCTION = ("\nAnswer with the option's letter from the given choices "
                   'directly.')
MCQ_INSTRUCTION_CN = '\n请直接回答选项字母。'
NO_OPTIONS_INSTRUCTION = '\nAnswer the question directly.'
NO_OPTIONS_INSTRUCTION_CN = '\n请直接回答问题。'
SHORT_ANSWER_INSTRUCTION = ('\nAnswer the question using a single word or '
                            'phrase.')
# MME ends its questions with it (once with two spaces before it)
YES_NO_REQUEST = re.compile(r'\s*Please answer yes or no\.\s*$')
YES_NO_ANSWERS = ('yes', 'no')


def has_chinese(text: str) -> bool:
    """VLMEvalKit's ``cn_string``: a CJK unified ideograph anywhere."""
    return re.search('[\u4e00-\u9fff]', text) is not None


def multiple_choice_prompt(question: str, options: Dict[str, str],
                           hint: Optional[str] = None) -> str:
    """``hint\\nquestion\\nA. ...\\nB. ...`` and the answer instruction."""
    text = question if hint is None else f'{hint}\n{question}'
    for letter, option in options.items():
        text += f'\n{letter}. {option}'
    if options:
        return text + (MCQ_INSTRUCTION_CN if has_chinese(text)
                       else MCQ_INSTRUCTION)
    return text + (NO_OPTIONS_INSTRUCTION_CN if has_chinese(text)
                   else NO_OPTIONS_INSTRUCTION)


def yes_no_prompt(question: str) -> str:
    """MME/POPE as LLaVA-1.5 asks them."""
    return YES_NO_REQUEST.sub('', question) + SHORT_ANSWER_INSTRUCTION


def vqa_prompt(question: str) -> str:
    """A short-answer question as LLaVA-1.5 asks it."""
    return question + SHORT_ANSWER_INSTRUCTION


def resolve_prompt_style(style: str, has_options: bool,
                         answers: Iterable[Optional[str]]) -> str:
    """The style to use: ``style`` itself unless it is ``'auto'``.

    ``'auto'`` is ``multiple_choice`` for a file with option columns,
    ``yes_no`` when it has answers and every one is yes or no (any case),
    ``vqa`` otherwise (also when no row has an answer).
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f'unknown prompt_style {style!r}; valid: '
                         f'{", ".join(PROMPT_STYLES)}')
    if style != 'auto':
        return style
    if has_options:
        return 'multiple_choice'
    answers = [a.strip().lower() for a in answers if a is not None]
    if answers and all(a in YES_NO_ANSWERS for a in answers):
        return 'yes_no'
    return 'vqa'


def benchmark_prompt(style: str, question: str, options: Dict[str, str],
                     hint: Optional[str] = None) -> str:
    """The question text of a row in a resolved ``style`` (the hint is
    shown with multiple-choice questions only, as VLMEvalKit does)."""
    if style == 'multiple_choice':
        return multiple_choice_prompt(question, options, hint)
    if style == 'yes_no':
        return yes_no_prompt(question)
    if style == 'vqa':
        return vqa_prompt(question)
    raise ValueError(f'prompt style {style!r} is not resolved; valid: '
                     f'{", ".join(PROMPT_STYLES[1:])}')
