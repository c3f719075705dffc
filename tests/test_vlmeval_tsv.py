"""VLMEvalTSVDataset: VLMEvalKit's TSV benchmarks as test-mode items.

Prompts are checked against strings written out by hand from the code the
LLaVA-1.5 numbers come from (cited at each test)."""
import base64
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.datasets import (DataError, LlavaDataset, VLMEvalTSVDataset,
                            llava_collate)
from dsvlm.datasets.benchmark_table import load_benchmark_table
from dsvlm.datasets.tiny.tokenizer import tiny_tokenizer
from dsvlm.registry import DATASETS

SMALL_WORLD = dict(num_images_train=8, num_images_test=4, image_size=32,
                   num_text_only=1)
PROCESSOR = dict(type='clip_image_processor', image_size=8)
TEMPLATE = dict(name='vicuna_v1', system='')
MCQ_INSTRUCTION = ("Answer with the option's letter from the given choices "
                   'directly.')
SHORT_ANSWER = 'Answer the question using a single word or phrase.'


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    """The tiny world's tokenizer (a small world: fast)."""
    return tiny_tokenizer(str(tmp_path_factory.mktemp('world') / 'shapes'),
                          **SMALL_WORLD)


def pixels(rgb, size=(6, 4)):
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[:] = rgb
    array[0, 0] = (255, 255, 255)  # not uniform: a flip or swap would show
    return array


def png_base64(array) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode('ascii')


RED, BLUE = png_base64(pixels((200, 0, 0))), png_base64(pixels((0, 0, 200)))


def write_tsv(path, header, rows):
    with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make(data_file, tokenizer, **kwargs):
    cfg = dict(type='VLMEvalTSVDataset', data_file=str(data_file),
               tokenizer=tokenizer, image_processor=PROCESSOR,
               template=TEMPLATE)
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def question_of(prompt):
    """The human turn of a vicuna_v1 prompt without system prompt."""
    assert prompt.startswith('USER: <image>\n') and prompt.endswith(
        ' ASSISTANT:'), prompt
    return prompt[len('USER: <image>\n'):-len(' ASSISTANT:')]


MCQ_HEADER = ['index', 'question', 'hint', 'A', 'B', 'C', 'D', 'answer',
              'category', 'l2-category', 'image', 'split']


@pytest.fixture
def mcq_file(tmp_path):
    return write_tsv(tmp_path / 'MMBench_TOY.tsv', MCQ_HEADER, [
        ['0', 'What animal is it?', 'A photo from a farm.', 'cat', 'dog',
         'cow', 'nan', 'C', 'instance', 'perception', RED, 'dev'],
        ['1', 'Which colour dominates?', '', 'red', 'blue', '', '', 'B',
         'color', 'perception', BLUE, 'dev'],
        ['1000000', 'Which colour dominates?', '', 'blue', 'red', '', '',
         'A', 'color', 'perception', '1', 'dev'],
    ])


def test_multiple_choice_prompt_and_items(mcq_file, tokenizer):
    dataset = make(mcq_file, tokenizer)
    assert isinstance(dataset, VLMEvalTSVDataset) and len(dataset) == 3
    assert dataset.prompt_style == 'multiple_choice'  # auto: an A column
    item = dataset[0]
    # VLMEvalKit vlmeval/vlm/llava/llava.py LLaVA.build_prompt: hint + '\n' +
    # question, '\n{key}. {item}' per non-NaN option, then the instruction
    # (LLaVA llava/eval/model_vqa_mmbench.py --single-pred-prompt: the same)
    assert question_of(item['data_sample']['prompt']) == (
        'A photo from a farm.\nWhat animal is it?\nA. cat\nB. dog\nC. cow\n'
        + MCQ_INSTRUCTION)
    assert question_of(dataset[1]['data_sample']['prompt']) == (
        'Which colour dominates?\nA. red\nB. blue\n' + MCQ_INSTRUCTION)
    sample = item['data_sample']
    assert sample['id'] == '0' and sample['index'] == 0
    assert sample['benchmark'] == 'MMBench_TOY'
    assert sample['row'] == dict(
        index='0', question='What animal is it?', hint='A photo from a farm.',
        A='cat', B='dog', C='cow', D='nan', answer='C', category='instance',
        split='dev', **{'l2-category': 'perception'})
    assert sample['options'] == dict(A='cat', B='dog', C='cow')
    assert sample['gt_answer'] == 'C'
    assert sample['category'] == 'instance'
    assert sample['l2-category'] == 'perception'
    assert sample['num_rows'] == 3
    assert (item['labels'] == IGNORE_INDEX).all()
    assert item['input_ids'].dtype == torch.long
    assert (item['input_ids'] == IMAGE_TOKEN_INDEX).sum() == 1
    assert item['pixel_values'].shape == (3, 8, 8)
    assert dataset.metainfo['benchmark'] == 'MMBench_TOY'
    batch = llava_collate([dataset[0], dataset[2]])
    assert batch['inputs']['pixel_values'].shape == (2, 3, 8, 8)
    assert [s['id'] for s in batch['data_samples']] == ['0', '1000000']


def test_chinese_and_option_less_prompts(tmp_path, tokenizer):
    data_file = write_tsv(tmp_path / 'MMBench_CN_TOY.tsv',
                          ['index', 'question', 'A', 'B', 'image'], [
                              ['0', '图中是什么动物？', '猫', '狗', RED],
                              ['1', 'How many cats?', '', '', RED]])
    dataset = make(data_file, tokenizer)
    # VLMEvalKit LLaVA.build_prompt: the Chinese instruction when cn_string
    # (a CJK ideograph in the prompt); 'Answer the question directly.' for a
    # row without options
    assert question_of(dataset[0]['data_sample']['prompt']) == (
        '图中是什么动物？\nA. 猫\nB. 狗\n请直接回答选项字母。')
    assert question_of(dataset[1]['data_sample']['prompt']) == (
        'How many cats?\nAnswer the question directly.')
    assert dataset[1]['data_sample']['options'] == {}
    assert dataset[1]['data_sample']['gt_answer'] is None


def test_yes_no_prompt_as_llava_mme(tmp_path, tokenizer):
    data_file = write_tsv(
        tmp_path / 'MME_TOY.tsv',
        ['index', 'image', 'question', 'answer', 'category', 'image_path'], [
            ['0', RED, 'Is there a red square? Please answer yes or no.',
             'Yes', 'color', 'a.png'],
            ['1', '0', 'Is there a blue square?  Please answer yes or no.',
             'no', 'color', 'a.png']])
    dataset = make(data_file, tokenizer)
    assert dataset.prompt_style == 'yes_no'  # auto: every answer yes/no
    # LLaVA's llava_mme.jsonl has MME's questions without 'Please answer yes
    # or no.' (playground/data/eval/MME/convert_answer_to_mme.py adds it
    # back, with one or two spaces) and with the short-answer instruction;
    # lmms-eval tasks/mme/utils.py mme_doc_to_text does the same
    assert question_of(dataset[0]['data_sample']['prompt']) == (
        'Is there a red square?\n' + SHORT_ANSWER)
    assert question_of(dataset[1]['data_sample']['prompt']) == (
        'Is there a blue square?\n' + SHORT_ANSWER)
    assert dataset[1]['data_sample']['row']['image_path'] == 'a.png'
    assert 'l2-category' not in dataset[1]['data_sample']


def test_vqa_prompt_and_auto_style(tmp_path, tokenizer):
    header = ['index', 'image', 'question', 'answer']
    vqa = write_tsv(tmp_path / 'vqa.tsv', header, [
        ['0', RED, 'What colour is it? Please answer yes or no.', 'red'],
        ['1', RED, 'Is it red?', 'yes']])
    dataset = make(vqa, tokenizer)
    assert dataset.prompt_style == 'vqa'  # not every answer is yes/no
    # LLaVA docs/Evaluation.md, "Short-answer (e.g. VQAv2, MME)"
    assert question_of(dataset[0]['data_sample']['prompt']) == (
        'What colour is it? Please answer yes or no.\n' + SHORT_ANSWER)
    no_answers = write_tsv(tmp_path / 'test_split.tsv', header[:3],
                           [['0', RED, 'Is it red?']])
    assert make(no_answers, tokenizer).prompt_style == 'vqa'
    forced = make(no_answers, tokenizer, prompt_style='multiple_choice')
    assert question_of(forced[0]['data_sample']['prompt']) == (
        'Is it red?\nAnswer the question directly.')
    with pytest.raises(ValueError, match='valid: auto, multiple_choice'):
        make(vqa, tokenizer, prompt_style='mcq')


def test_image_references_resolve_to_the_same_pixels(tmp_path, tokenizer):
    data_file = write_tsv(tmp_path / 'refs.tsv',
                          ['index', 'question', 'image'], [
                              ['7', 'q0', '12'],  # refers forward
                              ['12', 'q1', BLUE],
                              ['3', 'q2', RED],
                              ['4', 'q3', '3']])
    dataset = make(data_file, tokenizer)
    images = [np.asarray(dataset.load_image(i)) for i in range(4)]
    np.testing.assert_array_equal(images[1], pixels((0, 0, 200)))
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[3], pixels((200, 0, 0)))
    assert torch.equal(dataset[0]['pixel_values'], dataset[1]['pixel_values'])
    assert not torch.equal(dataset[0]['pixel_values'],
                           dataset[3]['pixel_values'])
    assert 'image' not in dataset[0]['data_sample']['row']


@pytest.mark.parametrize('template', ['vicuna_v1', 'llama3', 'qwen2'])
def test_ids_equal_llava_dataset_test_mode(mcq_file, tmp_path, tokenizer,
                                           template):
    dataset = make(mcq_file, tokenizer, template=template)
    (tmp_path / 'images').mkdir()
    records = []
    for i in range(len(dataset)):
        dataset.load_image(i).save(tmp_path / 'images' / f'{i}.png')
        records.append(dict(id=str(i), image=f'{i}.png', conversations=[
            dict(value='<image>\n' + dataset.question_text(i), **{
                'from': 'human'}),
            dict(value=dataset.row(i).cells['answer'], **{'from': 'gpt'})]))
    (tmp_path / 'ann.json').write_text(json.dumps(records))
    reference = LlavaDataset(tmp_path / 'ann.json', tmp_path / 'images',
                             tokenizer, PROCESSOR, template, test_mode=True)
    for i in range(len(dataset)):
        ours, theirs = dataset[i], reference[i]
        assert torch.equal(ours['input_ids'], theirs['input_ids'])
        assert torch.equal(ours['labels'], theirs['labels'])
        assert torch.equal(ours['pixel_values'], theirs['pixel_values'])
        for key in ('prompt', 'gt_answer'):
            assert ours['data_sample'][key] == theirs['data_sample'][key]


def test_quoted_cells_and_line_numbers(tmp_path, tokenizer):
    data_file = write_tsv(tmp_path / 'quoted.tsv',
                          ['index', 'question', 'image'], [
                              ['0', 'Two\nlines\twith a tab "quoted"', RED],
                              ['0', 'again', RED]])
    with pytest.raises(DataError) as e:
        make(data_file, tokenizer)
    assert 'line 4' in str(e.value)  # the header, then a row on two lines
    assert "index '0' repeats the index of line 2" in str(e.value)


def test_max_samples_and_rows_without_image(tmp_path, tokenizer,
                                            logged_warnings):
    data_file = write_tsv(tmp_path / 'some.tsv',
                          ['index', 'question', 'image'], [
                              [str(i), f'q{i}', '' if i == 1 else RED]
                              for i in range(5)])
    dataset = make(data_file, tokenizer, max_samples=2)
    assert len(dataset) == 2 and dataset.num_rows == 4
    assert [dataset[i]['data_sample']['id'] for i in range(2)] == ['0', '2']
    assert dataset[1]['data_sample']['num_rows'] == 4
    assert any('only 2 of the 4 rows' in m and str(data_file) in m
               for m in logged_warnings)
    assert any('1 row(s)' in m and 'no image' in m for m in logged_warnings)


def test_image_path_column_without_images(tmp_path, tokenizer):
    (tmp_path / 'img').mkdir()
    Image.fromarray(pixels((0, 150, 0))).save(tmp_path / 'img' / 'g.png')
    data_file = write_tsv(tmp_path / 'paths.tsv',
                          ['index', 'question', 'image_path'],
                          [['0', 'q', 'img/g.png']])
    dataset = make(data_file, tokenizer)
    np.testing.assert_array_equal(np.asarray(dataset.load_image(0)),
                                  pixels((0, 150, 0)))
    missing = write_tsv(tmp_path / 'missing.tsv',
                        ['index', 'question', 'image_path'],
                        [['0', 'q', 'img/none.png']])
    with pytest.raises(DataError, match=r'missing_image.*line 2.*none\.png'):
        make(missing, tokenizer)


def test_plain_template_is_refused(mcq_file, tokenizer):
    with pytest.raises(ValueError, match='vicuna_v1, llama3, qwen2'):
        make(mcq_file, tokenizer, template='plain')


# --- bad input: DataError names the file and the row ---------------------

def problems_of(data_file):
    with pytest.raises(DataError) as e:
        load_benchmark_table(data_file)
    for problem in e.value.problems:
        assert str(problem).startswith(f'[{problem.kind}] {data_file}, ')
    return e.value


def test_missing_columns_name_the_missing_and_present_ones(tmp_path):
    data_file = write_tsv(tmp_path / 'cols.tsv', ['index', 'image', 'A'],
                          [['0', RED, 'x']])
    error = problems_of(data_file)
    assert str(error) == (f'[bad_table] {data_file}, line 1: missing '
                          'column(s) question; the header has: index, image, '
                          'A')
    no_image = write_tsv(tmp_path / 'noimg.tsv', ['index', 'question'],
                         [['0', 'q']])
    assert 'neither an image nor an image_path column' in str(
        problems_of(no_image))


def test_every_row_problem_is_reported_at_once(tmp_path):
    data_file = write_tsv(tmp_path / 'bad.tsv',
                          ['index', 'question', 'A', 'B', 'C', 'answer',
                           'image'], [
                              ['0', 'q0', 'x', 'y', '', 'A', RED],
                              ['1', 'q1', 'x', 'y', '', 'E', RED],  # line 3
                              ['2', 'q2', 'x', 'y', 'nan', 'C', RED],
                              ['0', 'q3', 'x', 'y', '', 'B', RED],  # line 5
                              ['4', 'q4', 'x', 'y', '', 'A', '99'],
                              ['5', 'q5', 'x', 'y', '', 'A', '6'],  # line 7
                              ['6', 'q6', 'x', 'y', '', 'A', '1'],
                              ['7', '', 'x', 'y', '', 'A', RED],  # line 9
                              ['8', 'q8', 'x', 'y', '', 'A', RED, 'extra']])
    error = problems_of(data_file)
    found = [(p.kind, p.line, p.sample_id) for p in error.problems]
    assert found == [('bad_answer', 3, '1'), ('bad_answer', 4, '2'),
                     ('duplicate_index', 5, '0'),
                     ('bad_image_reference', 6, '4'),
                     ('bad_image_reference', 7, '5'),
                     ('bad_record', 9, '7'), ('bad_record', 10, '8')]
    text = [str(p) for p in error.problems]
    assert text[0] == (f"[bad_answer] {data_file}, line 3, id '1': answer "
                       "'E' is not one of the row's options; valid: A, B")
    assert text[1].endswith("answer 'C' is not one of the row's options (its "
                            'option cell is empty); valid: A, B')
    assert text[2].endswith("index '0' repeats the index of line 2")
    assert "'99'" in text[3] and 'names no row with an image' in text[3]
    assert 'line 8' in text[4] and 'is a reference too' in text[4]
    assert "empty 'question' cell" in text[5]
    assert '8 cells, but the header has 7 columns' in text[6]
    assert '... and 2 more problems' in str(error)  # 5 shown, all kept


def test_undecodable_image_fails_when_read(tmp_path, tokenizer):
    data_file = write_tsv(tmp_path / 'broken.tsv',
                          ['index', 'question', 'image'], [
                              ['0', 'q0', RED],
                              ['a1', 'q1', base64.b64encode(
                                  b'not an image at all, ' * 5).decode()]])
    dataset = make(data_file, tokenizer)  # decoding is lazy
    assert dataset[0]['pixel_values'] is not None
    with pytest.raises(DataError) as e:
        dataset[1]
    assert str(e.value).startswith(
        f"[unreadable_image] {data_file}, line 3, id 'a1': cannot decode the "
        'base64 image cell')
