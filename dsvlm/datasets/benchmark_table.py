"""Benchmark tables in VLMEvalKit's TSV format: reading and validation.

VLMEvalKit distributes its benchmarks (MMBench, MME, SEED-Bench, POPE...)
as tab-separated files that pandas reads (``read_csv(sep='\\t')``, quoted
cells allowed); this module reads them with the ``csv`` module.  Columns:

* ``index`` (required): the row's id, unique in the file;
* ``question`` (required);
* ``image``: a base64-encoded image, or, to save space, the ``index`` of
  another row whose image to use: VLMEvalKit takes a non-empty cell of at
  most 64 characters as such a reference (``ImageBaseDataset.__init__``),
  and the row it names must hold an image itself.  A row whose cell is
  empty is skipped, as VLMEvalKit does (``skip_noimg``);
* ``image_path``: the image file of a table without an ``image`` column
  (relative to the table's folder); otherwise just the image's name;
* ``A``, ``B``, ...: options (consecutive capital letters from ``A``; an
  empty or ``nan`` cell is an absent option);
* ``answer`` (optional), ``hint``, ``category``, ``l2-category``, ``split``
  and anything else, kept as strings.

Every row is checked on load, all problems are raised together as one
:class:`DataError` naming the file, line and index of each; images are
decoded only when read (:meth:`BenchmarkTable.load_image`).
"""
import base64
import csv
import io
import os.path as osp
import string
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from PIL import Image

from dsvlm.constants import DEFAULT_IMAGE_TOKEN

from .errors import DataError, DataProblem

REQUIRED_COLUMNS = ('index', 'question')
MAX_REFERENCE_LENGTH = 64  # VLMEvalKit: an image cell this short names a row
MISSING_CELLS = ('', 'nan')  # pandas reads both as NaN


def is_missing(cell: Optional[str]) -> bool:
    return cell is None or cell.strip().lower() in MISSING_CELLS


@dataclass
class BenchmarkRow:
    """One row of a table (its ``image`` cell apart)."""
    line: int  # 1-based line of the file where the row starts
    position: int  # position among the rows of the file
    cells: Dict[str, str]  # every column but ``image``
    options: Dict[str, str]  # letter -> option text, absent ones left out
    image: Optional[str] = None  # base64, references resolved
    image_file: Optional[str] = None  # without an ``image`` column

    @property
    def index(self) -> str:
        return self.cells['index']

    def cell(self, column: str) -> Optional[str]:
        """The cell of ``column``; None if the column or value is absent."""
        value = self.cells.get(column)
        return None if is_missing(value) else value


@dataclass
class BenchmarkTable:
    data_file: str
    columns: List[str]
    option_letters: List[str]  # option columns: 'A', 'B', ...
    rows: List[BenchmarkRow] = field(default_factory=list)
    num_skipped: int = 0  # rows without an image

    def problem(self, row: BenchmarkRow, kind: str,
                message: str) -> DataProblem:
        return DataProblem(kind, self.data_file, message, line=row.line,
                           index=row.position,
                           sample_id=row.cells.get('index') or None)

    def load_image(self, row: BenchmarkRow) -> Image.Image:
        """The row's RGB image; DataError if it does not decode."""
        try:
            if row.image_file is not None:
                with Image.open(row.image_file) as image:
                    return image.convert('RGB')
            with Image.open(io.BytesIO(base64.b64decode(row.image))) as image:
                return image.convert('RGB')
        except Exception as e:  # binascii, PIL and OS errors
            source = (row.image_file if row.image_file is not None else
                      f'the base64 image cell ({len(row.image)} characters)')
            raise DataError([self.problem(
                row, 'unreadable_image',
                f'cannot decode {source}: {type(e).__name__}: {e}')]) from e


def option_columns(columns) -> List[str]:
    """``['A', 'B', ...]``: the consecutive option columns of a header."""
    letters = []
    for letter in string.ascii_uppercase:
        if letter not in columns:
            break
        letters.append(letter)
    return letters


def load_benchmark_table(data_file) -> BenchmarkTable:
    """Read and check ``data_file``; DataError lists every problem."""
    data_file = str(data_file)
    header, raw_rows = _read_tsv(data_file)
    table = BenchmarkTable(data_file, header, option_columns(header))
    problems = []
    for position, (line, values) in enumerate(raw_rows):
        row = BenchmarkRow(line, position, dict(zip(header, values)), {})
        if len(values) > len(header):
            problems.append(table.problem(
                row, 'bad_record', f'{len(values)} cells, but the header has '
                f'{len(header)} columns'))
            continue
        for column in header[len(values):]:  # short rows: pandas fills NaN
            row.cells[column] = ''
        row.image = row.cells.pop('image', None)
        if row.image is not None and is_missing(row.image):
            table.num_skipped += 1  # VLMEvalKit's skip_noimg
            continue
        row.options = {letter: row.cells[letter]
                       for letter in table.option_letters
                       if not is_missing(row.cells[letter])}
        problems += [table.problem(row, kind, message)
                     for kind, message in _row_problems(table, row)]
        table.rows.append(row)
    problems += _duplicate_indices(table)
    problems += _resolve_image_references(table)
    if problems:
        raise DataError(sorted(problems, key=lambda p: p.line))
    return table


@contextmanager
def _large_csv_fields():
    """Let ``csv`` read base64 images (a cell may hold megabytes)."""
    previous, limit = csv.field_size_limit(), sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:  # a C long is 32 bits on some platforms
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_tsv(data_file: str) -> Tuple[List[str], List[Tuple[int, list]]]:
    """The header and ``(line, cells)`` of every non-blank row."""
    if not osp.isfile(data_file):
        raise FileNotFoundError(f'benchmark file not found: {data_file}')
    rows = []
    with _large_csv_fields(), open(data_file, encoding='utf-8-sig',
                                   newline='') as f:
        reader = csv.reader(f, delimiter='\t')
        try:
            header = next(reader, [])
            line = reader.line_num + 1
            for values in reader:
                if values:
                    rows.append((line, values))
                line = reader.line_num + 1
        except csv.Error as e:
            raise DataError([DataProblem('bad_table', data_file, str(e),
                                         line=reader.line_num)]) from e
    _check_header(data_file, header)
    return header, rows


def _check_header(data_file: str, header: List[str]) -> None:
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        problems.append(f'missing column(s) {", ".join(missing)}')
    if 'image' not in header and 'image_path' not in header:
        problems.append('neither an image nor an image_path column')
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        problems.append(f'repeated column(s) {", ".join(repeated)}')
    if problems:
        raise DataError([DataProblem(
            'bad_table', data_file, f'{"; ".join(problems)}; the header has: '
            f'{", ".join(header) or "nothing"}', line=1)])


def _row_problems(table: BenchmarkTable, row: BenchmarkRow):
    """``(kind, message)`` of every problem of one row."""
    if not row.index.strip():
        yield 'bad_record', "empty 'index' cell"
    if row.cell('question') is None:
        yield 'bad_record', "empty 'question' cell"
    texts = [row.cells['question'], row.cells.get('hint', ''),
             *row.options.values()]
    if any(DEFAULT_IMAGE_TOKEN in t for t in texts):
        yield 'bad_image_token', (
            f'{DEFAULT_IMAGE_TOKEN} in the text; the dataset puts the image '
            'before the question itself')
    if row.image is not None and row.image.lstrip().startswith('['):
        yield 'bad_record', ('a list of images: multi-image rows are not '
                             'supported')
    if row.image is None:
        yield from _image_file_problems(table, row)
    answer = row.cell('answer')
    if table.option_letters and answer is not None \
            and answer.strip() not in row.options:
        empty = (' (its option cell is empty)'
                 if answer.strip() in table.option_letters else '')
        yield 'bad_answer', (
            f"answer {answer!r} is not one of the row's options{empty}; "
            f'valid: {", ".join(row.options) or "none"}')


def _image_file_problems(table: BenchmarkTable, row: BenchmarkRow):
    path = row.cell('image_path')
    if path is None:
        yield 'missing_image', ("no 'image' column and an empty "
                                "'image_path' cell")
        return
    row.image_file = osp.join(osp.dirname(table.data_file), path)
    if not osp.isfile(row.image_file):
        yield 'missing_image', f'image not found: {row.image_file}'


def _duplicate_indices(table: BenchmarkTable) -> List[DataProblem]:
    first_line, problems = {}, []
    for row in table.rows:
        if row.index in first_line:
            problems.append(table.problem(
                row, 'duplicate_index', f'index {row.index!r} repeats the '
                f'index of line {first_line[row.index]}'))
        else:
            first_line[row.index] = row.line
    return problems


def _resolve_image_references(table: BenchmarkTable) -> List[DataProblem]:
    """Replace each reference by the image of the row it names."""
    cells, problems = {}, []
    for row in table.rows:
        cells.setdefault(row.index, (row.image, row.line))
    for row in table.rows:
        reference = row.image
        if reference is None or len(reference) > MAX_REFERENCE_LENGTH:
            continue
        image, line = cells.get(reference, (None, None))
        if line is None:
            problems.append(table.problem(
                row, 'bad_image_reference',
                f'the image cell {reference!r} (of up to '
                f'{MAX_REFERENCE_LENGTH} characters: the index of the row '
                'whose image to use) names no row with an image in the file'))
        elif image is None or len(image) <= MAX_REFERENCE_LENGTH:
            problems.append(table.problem(
                row, 'bad_image_reference',
                f'the image cell {reference!r} names the row of line {line}, '
                f'whose image cell {image!r} is a reference too, not an '
                'image'))
        else:
            row.image = image
    return problems
