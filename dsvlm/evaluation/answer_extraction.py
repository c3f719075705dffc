"""Rule-based answer extraction, as VLMEvalKit does it without an LLM judge.

Ported from VLMEvalKit (open-compass/VLMEvalKit, commit e8e78f05, 2026-08):

* ``can_infer_option``, ``can_infer_text``, ``can_infer`` from
  ``vlmeval/utils/matching_util.py``: what ``extract_answer_from_item`` in
  ``vlmeval/dataset/utils/multiple_choice.py`` uses before (and, under
  ``judge='exact_matching'``, instead of) the GPT judge;
* ``YOrN_Extraction`` from ``vlmeval/dataset/utils/yorn.py`` with
  ``process_punctuation`` from ``vlmeval/smp/misc.py``.

The rules are kept as they are there, quirks included (a letter counts only
among the last five words; two letters -> no answer; the option text must be
the only option text in a short answer).  One difference: VLMEvalKit's
``VERBOSE`` environment variable switches on an extra rule ('A' in a long
answer may be the article, so no answer); it is a logging switch and is left
out here, as it is off by default.
"""
import re
import string
from typing import Dict, Optional, Union

# matching_util.py: verbose chain-of-thought answers such as
# "The correct answer is **B**. Here's why: ..."
_VERBOSE_ANSWER_RE = re.compile(
    r'(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**')
_REJECTIONS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    'Cannot determine the answer',
)
_SEPARATORS = '.()[],:;!*#{}'
_NO_ANSWER = 'Z'  # VLMEvalKit's label for "none of the options"


def can_infer_option(answer: str, choices: Dict[str, str]) -> Union[str, bool]:
    """A choice letter standing alone in ``answer`` ('B', 'B.', '(B)',
    'answer is B'), 'Z' for a refusal, or False."""
    if 'Failed to obtain answer via API' in answer:
        return False
    for refusal in _REJECTIONS:
        if refusal in answer:
            return _NO_ANSWER

    def count_choice(splits, letters):
        return sum(1 for c in letters if c in splits)

    answer_mod = answer
    for c in _SEPARATORS:
        answer_mod = answer_mod.replace(c, ' ')
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            # only a letter among the last five words counts
            if ch in splits and splits.index(ch) > (len(splits) - 5):
                return ch
    elif count == 0 and count_choice(splits, {_NO_ANSWER, ''}) == 1:
        return _NO_ANSWER
    match = _VERBOSE_ANSWER_RE.search(answer or '')
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False


def can_infer_text(answer: str, choices: Dict[str, str]) -> Union[str, bool]:
    """The letter of the only option whose text occurs in a short
    ``answer`` (at most twice the options' total length), or False."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    for k in choices:
        if k not in string.ascii_uppercase:
            raise ValueError(f'option label {k!r} is not an upper-case '
                             'letter')
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    if len(cands) == 1:
        return cands[0]
    return False


def can_infer(answer, choices: Dict[str, str]) -> Union[str, bool]:
    """VLMEvalKit's ``can_infer``: the option rule first, then the text
    rule."""
    answer = str(answer)
    copt = can_infer_option(answer, choices)
    return copt if copt else can_infer_text(answer, choices)


def extract_choice(prediction, options: Dict[str, str]) -> Optional[str]:
    """The option letter that ``prediction`` chooses, or None.

    ``options`` maps letters to option texts.  None is what VLMEvalKit
    marks 'Z' (refusal, no letter, several letters, no unique option text);
    it never equals a ground-truth letter.
    """
    choices = {k: str(v) for k, v in options.items()}  # can_infer_text
    found = can_infer(prediction, choices)  # lower-cases VLMEvalKit's copy
    if not found or (found == _NO_ANSWER and _NO_ANSWER not in options):
        return None
    return found


def process_punctuation(text: str) -> str:
    """VLMEvalKit's ``process_punctuation`` (the VQA-v2 normaliser)."""
    out = text
    punct = [';', r'/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\',
             '_', '-', '>', '<', '@', '`', ',', '?', '!']
    comma_strip = re.compile(r'(\d)(,)(\d)')
    period_strip = re.compile(r'(?<!\d)\.(?!\d)')
    for p in punct:
        # tests the input text, not the text being rewritten, as upstream
        if (p + ' ' in text or ' ' + p in text) or (
                re.search(comma_strip, text) is not None):
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    # upstream passes re.UNICODE positionally, i.e. as count (32)
    return period_strip.sub('', out, count=re.UNICODE)


def extract_yes_no(prediction) -> str:
    """'Yes' when the words hold 'yes' and not 'no', 'No' for the reverse,
    else 'Unknown' (VLMEvalKit's ``YOrN_Extraction``)."""
    words = process_punctuation(str(prediction).lower()).split()
    if 'yes' in words and 'no' not in words:
        return 'Yes'
    if 'yes' not in words and 'no' in words:
        return 'No'
    return 'Unknown'
