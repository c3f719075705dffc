"""Problems found in LLaVA data and benchmark tables, and the error that
reports them."""
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class DataProblem:
    """One problem of an annotation file (or benchmark table), located as
    precisely as known.

    ``kind`` is one of :data:`PROBLEM_KINDS`.
    """
    kind: str
    ann_file: str
    message: str
    line: Optional[int] = None  # 1-based line of the annotation file
    index: Optional[int] = None  # position among the file's records
    sample_id: Optional[str] = None

    def __str__(self) -> str:
        where = [self.ann_file]
        if self.line is not None:
            where.append(f'line {self.line}')
        elif self.index is not None:  # a line is more useful than a position
            where.append(f'record {self.index}')
        if self.sample_id is not None:
            where.append(f'id {self.sample_id!r}')
        return f'[{self.kind}] {", ".join(where)}: {self.message}'


PROBLEM_KINDS = (
    'bad_json',  # the file does not parse
    'bad_encoding',  # the file is not UTF-8
    'bad_image_path',  # an image path leaves the image folder
    'bad_record',  # a record lacks fields or has fields of the wrong type
    'bad_roles',  # turns do not alternate human/gpt
    'no_assistant',  # a conversation without a gpt turn
    'bad_image_token',  # <image> where it cannot be, or missing image
    'missing_image',  # the image file does not exist
    'unreadable_image',  # the image file exists but does not decode
    'corrupt_jpeg',  # JPEG data the decoder would read past with a warning
    'image_too_large',  # more pixels (after padding) than the budget
    'extreme_aspect_ratio',  # too elongated to survive the pipeline
    'over_length',  # tokenised sample longer than max_length
    'unlocated_answer',  # an answer is not a whole number of tokens
    'no_supervision',  # no supervised token (left after truncation)
    'no_usable_sample',  # a bad sample with no usable one to replace it
    'bad_table',  # a benchmark table lacks columns it needs
    'duplicate_index',  # two rows of a benchmark table share an index
    'bad_image_reference',  # an image cell names a row without an image
    'bad_answer',  # a multiple-choice answer that is not one of the options
)


class DataError(ValueError):
    """Bad input data; the message names the file, line or sample id."""

    def __init__(self, problems: Sequence[DataProblem], shown: int = 5):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f'... and {len(self.problems) - shown} more problems '
                         '(tools/check_data.py lists them all)')
        super().__init__('\n'.join(lines))
