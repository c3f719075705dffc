"""Benchmark metrics scored as VLMEvalKit does (exact matching, no judge).

Every expected number is worked out by hand in the comments next to it.
"""
import csv
import os

import pytest
from mmengine.evaluator import Evaluator

from dsvlm.evaluation import (HallusionBenchScore, MMEScore,
                              MultipleChoiceAccuracy, POPEScore,
                              extract_choice, extract_yes_no)
from dsvlm.registry import METRICS


def sample(tsv_index, position, gt, pred, benchmark='Bench', num_rows=None,
           options=None, **columns):
    """A data sample as the benchmark dataset gives it, plus the model's
    ``pred_answer``."""
    row = dict(index=str(tsv_index), question=f'question {tsv_index}',
               answer=gt, **(options or {}), **columns)
    out = dict(id=str(tsv_index), index=position, benchmark=benchmark,
               row=row, options=dict(options or {}), gt_answer=gt,
               prompt=row['question'], pred_answer=pred)
    out['num_rows'] = num_rows
    for key in ('category', 'l2-category'):
        if key in columns:
            out[key] = columns[key]
    return out


def run_metric(metric, samples, batch=3):
    """Through MMEngine's Evaluator, a few samples per ``process`` call."""
    evaluator = Evaluator(metric)
    for start in range(0, len(samples), batch):
        evaluator.process(samples[start:start + batch])
    return evaluator.evaluate(len(samples))


# --- answer extraction (VLMEvalKit's can_infer / YOrN_Extraction) ----------

COLOURS = dict(A='blue', B='red')
FOUR = dict(A='red', B='blue', C='green', D='yellow')


@pytest.mark.parametrize('prediction, options, expected', [
    ('The answer is B.', COLOURS, 'B'),  # one letter among the last 5 words
    ('B', COLOURS, 'B'),
    ('(C) green', FOUR, 'C'),
    ('A.', FOUR, 'A'),
    ('A or B', COLOURS, None),  # two letters: no answer
    ('It is red', COLOURS, 'B'),  # option text, answer short enough
    ('It is red or blue', COLOURS, None),  # two option texts
    ('Cannot determine the answer', FOUR, None),  # a refusal ('Z')
    # the letter is the first of 12 words (not among the last 5), no
    # "answer is", and the text is longer than 2 * len('bluered') = 14
    ('B is right because the picture shows a ball of that colour', COLOURS,
     None),
    # verbose chain of thought: 'C' is the 5th of 15 words, too early for
    # the letter rule, but "answer is **C**" matches
    ('The correct answer is **C**. Here is why: the sky looks clear and '
     'blue today', FOUR, 'C'),
])
def test_extract_choice(prediction, options, expected):
    assert extract_choice(prediction, options) == expected


def test_extract_choice_does_not_change_the_options():
    options = dict(A='Blue', B='Red')
    assert extract_choice('red', options) == 'B'
    assert options == dict(A='Blue', B='Red')


@pytest.mark.parametrize('prediction, expected', [
    ('Yes, there is a dog.', 'Yes'),
    ('No.', 'No'),
    ('The answer is yes.', 'Yes'),  # the period is stripped
    ('No, there is no dog', 'No'),
    ('Yes and no', 'Unknown'),  # both words
    ('yes/no', 'Unknown'),  # '/' becomes a space: both words
    ('There is a dog', 'Unknown'),  # neither
    ('Nope', 'Unknown'),
])
def test_extract_yes_no(prediction, expected):
    assert extract_yes_no(prediction) == expected


# --- MME -------------------------------------------------------------------

def mme_samples():
    rows = [
        # color (perception): img1 both right, img2 one right, img3 none
        ('color', 'color/1.jpg', 'Yes', 'Yes'),
        ('color', 'color/1.jpg', 'No', 'No, it is not.'),
        ('color', 'color/2.jpg', 'Yes', 'Yes'),
        ('color', 'color/2.jpg', 'No', 'Yes'),
        ('color', 'color/3.jpg', 'Yes', 'I cannot tell'),  # Unknown: wrong
        ('color', 'color/3.jpg', 'No', 'Yes'),
        # code_reasoning (cognition): all four right
        ('code_reasoning', 'code/4.png', 'Yes', 'yes'),
        ('code_reasoning', 'code/4.png', 'No', 'no'),
        ('code_reasoning', 'code/5.png', 'Yes', 'Yes.'),
        ('code_reasoning', 'code/5.png', 'No', 'No.'),
    ]
    return [sample(i, i, gt, pred, benchmark='MME', num_rows=len(rows),
                   category=cat, image_path=path)
            for i, (cat, path, gt, pred) in enumerate(rows)]


def test_mme_score():
    metrics = run_metric(dict(type='dsvlm.MMEScore'), mme_samples())
    # color: 3 of 6 questions right -> acc 50; images right on both
    # questions: 1.jpg only -> acc+ 1/3 = 33.33; score 83.33
    assert metrics['acc/color'] == pytest.approx(50.0)
    assert metrics['acc_plus/color'] == pytest.approx(100 / 3)
    assert metrics['score/color'] == pytest.approx(50 + 100 / 3)
    # code_reasoning: 4/4 -> 100, both images -> 100, score 200
    assert metrics['acc/code_reasoning'] == pytest.approx(100.0)
    assert metrics['acc_plus/code_reasoning'] == pytest.approx(100.0)
    assert metrics['score/code_reasoning'] == pytest.approx(200.0)
    # perception: only color present; cognition: only code_reasoning
    assert metrics['perception'] == pytest.approx(50 + 100 / 3)
    assert metrics['cognition'] == pytest.approx(200.0)
    assert metrics['num_rows'] == 10 and metrics['num_scored'] == 10


def test_mme_needs_image_path():
    bad = sample(7, 0, 'Yes', 'Yes', benchmark='MME', category='color')
    with pytest.raises(ValueError, match=r"id='7'.*'MME'.*image_path"):
        MMEScore().process(None, [bad])


# --- POPE ------------------------------------------------------------------

def pope_samples():
    rows = [
        ('random', 'Yes', 'Yes'),  # TP
        ('random', 'Yes', 'No'),  # FN
        ('random', 'No', 'No'),  # TN
        ('random', 'No', 'Yes, there is'),  # FP
        ('popular', 'Yes', 'Yes'),  # TP
        ('popular', 'No', 'I am not sure'),  # Unknown: wrong, a negative
        ('adversarial,popular', 'Yes', 'yes'),  # TP in both splits
        ('adversarial', 'Yes', 'maybe'),  # Unknown: wrong, FN
    ]
    return [sample(i, i, gt, pred, benchmark='POPE', num_rows=len(rows),
                   category=cat)
            for i, (cat, gt, pred) in enumerate(rows)]


def test_pope_score():
    metrics = run_metric(POPEScore(), pope_samples())
    # the shared row counts in both splits, so 9 rows overall:
    # TP 4 (random, popular, shared x2), FP 1, FN 2 (random, adversarial)
    # precision 4/5 = 80, recall 4/6 = 66.67, F1 = 2PR/(P+R) = 8/11
    # right: TP 4 + the random TN = 5 of 9; extracted 'Yes': 4 TP + 1 FP
    assert metrics['precision'] == pytest.approx(80.0)
    assert metrics['recall'] == pytest.approx(200 / 3)
    assert metrics['f1'] == pytest.approx(800 / 11)
    assert metrics['accuracy'] == pytest.approx(500 / 9)
    assert metrics['yes_ratio'] == pytest.approx(500 / 9)
    # random: TP 1, FP 1, FN 1, TN 1
    for key in ('accuracy', 'precision', 'recall', 'f1', 'yes_ratio'):
        assert metrics[f'{key}/random'] == pytest.approx(50.0)
    # popular: TP 2 (own + shared), the Unknown is a negative on a 'No'
    # question: P = R = F1 = 100; accuracy 2/3 (Unknown is wrong); yes 2/3
    assert metrics['precision/popular'] == pytest.approx(100.0)
    assert metrics['recall/popular'] == pytest.approx(100.0)
    assert metrics['f1/popular'] == pytest.approx(100.0)
    assert metrics['accuracy/popular'] == pytest.approx(200 / 3)
    assert metrics['yes_ratio/popular'] == pytest.approx(200 / 3)
    # adversarial: TP 1 (shared), FN 1 (Unknown on a 'Yes'): P 100, R 50,
    # F1 = 2*1*0.5/1.5 = 66.67, accuracy 1/2, yes 1/2
    assert metrics['precision/adversarial'] == pytest.approx(100.0)
    assert metrics['recall/adversarial'] == pytest.approx(50.0)
    assert metrics['f1/adversarial'] == pytest.approx(200 / 3)
    assert metrics['accuracy/adversarial'] == pytest.approx(50.0)
    assert metrics['num_scored'] == 8


def test_yes_no_answer_must_be_yes_or_no():
    bad = sample(3, 3, 'yes', 'Yes', benchmark='POPE')
    with pytest.raises(ValueError, match=r"id='3'.*'POPE'.*'Yes' or 'No'"):
        POPEScore().process(None, [bad])


# --- HallusionBench --------------------------------------------------------

def hallusion_samples():
    rows = [  # category, l2-category, set, figure, question, gt, pred
        ('VD', 'chart', 0, 0, 0, 'Yes', 'Yes'),
        ('VD', 'chart', 0, 0, 1, 'No', 'No'),
        ('VD', 'chart', 0, 1, 0, 'No', 'No'),
        ('VD', 'chart', 0, 1, 1, 'Yes', 'No'),  # wrong
        ('VS', 'map', 1, 0, 0, 'Yes', 'Yes'),
        ('VS', 'map', 1, 0, 1, 'No', 'Yes'),  # wrong
        ('VD', 'table', 0, 0, 0, 'Yes', 'No'),  # wrong
    ]
    out = []
    for pos, (cat, l2, set_id, fig, q, gt, pred) in enumerate(rows):
        # VLMEvalKit reads the ids from fields 3, 4, 5 of the index
        index = f'{cat}_{l2}_0_{set_id}_{fig}_{q}'
        out.append(sample(index, pos, gt, pred, benchmark='HallusionBench',
                          num_rows=len(rows), category=cat,
                          **{'l2-category': l2}))
    return out


def test_hallusion_bench_score():
    metrics = run_metric(HallusionBenchScore(), hallusion_samples())
    # aAcc: 4 of 7 right
    assert metrics['aAcc'] == pytest.approx(400 / 7)
    # figures (l2, set, fig): chart-0-0 right, chart-0-1 wrong, map-1-0
    # wrong, table-0-0 wrong -> 1/4 (grouping by category instead would
    # merge table-0-0 into VD-0-0 and give 0)
    assert metrics['fAcc'] == pytest.approx(25.0)
    # questions (l2, set, q): chart-0-0 right (both figures), chart-0-1
    # wrong, map-1-0 right, map-1-1 wrong, table-0-0 wrong -> 2/5
    assert metrics['qAcc'] == pytest.approx(40.0)
    # VD = chart + table rows: 3/5; figures 1/3; questions 1/3
    assert metrics['aAcc/category/VD'] == pytest.approx(60.0)
    assert metrics['fAcc/category/VD'] == pytest.approx(100 / 3)
    assert metrics['qAcc/category/VD'] == pytest.approx(100 / 3)
    # VS = map: 1/2; figure map-1-0 wrong: 0; questions 1/2
    assert metrics['aAcc/category/VS'] == pytest.approx(50.0)
    assert metrics['fAcc/category/VS'] == pytest.approx(0.0)
    assert metrics['qAcc/category/VS'] == pytest.approx(50.0)
    # chart: 3/4; figures 1/2; questions 1/2
    assert metrics['aAcc/l2-category/chart'] == pytest.approx(75.0)
    assert metrics['fAcc/l2-category/chart'] == pytest.approx(50.0)
    assert metrics['qAcc/l2-category/chart'] == pytest.approx(50.0)
    assert metrics['aAcc/l2-category/table'] == pytest.approx(0.0)


# --- multiple choice, MMBench circular ------------------------------------

def mmbench_samples():
    """Q0: 4 rotations, the main row right, one rotation wrong.  Q1: 4
    rotations all right.  Q2: 2 options, 2 rotations, both right."""
    four = ['cat', 'dog', 'bird', 'fish']
    rows = []  # (tsv index, options, answer, prediction, category, l2)
    for k in range(4):  # option lists rotated by k, the answer follows
        opts = dict(zip('ABCD', four[k:] + four[:k]))
        gt = 'ABCD'[(4 - k) % 4]  # where 'cat' ends up
        pred = gt if k != 2 else ('B' if gt != 'B' else 'A')
        rows.append((k * 1_000_000, opts, gt, pred, 'ocr', 'perception'))
    for k in range(4):
        opts = dict(zip('ABCD', four[k:] + four[:k]))
        gt = 'ABCD'[(4 - k) % 4]
        # text answers: the option text alone
        rows.append((k * 1_000_000 + 1, opts, gt, 'It is a cat', 'ocr',
                     'perception'))
    rows.append((2, dict(A='yes', B='no'), 'A', '(A)', 'logic', 'reasoning'))
    rows.append((1_000_002, dict(A='no', B='yes'), 'B', 'B. yes', 'logic',
                 'reasoning'))
    # file order: the three questions first, then the copies
    rows.sort(key=lambda r: (r[0] >= 1_000_000, r[0]))
    samples = [sample(idx, pos, gt, pred, benchmark='MMBench_DEV_EN',
                      num_rows=len(rows), options=opts, category=cat,
                      **{'l2-category': l2})
               for pos, (idx, opts, gt, pred, cat, l2) in enumerate(rows)]
    return samples[::-1]  # processed out of file order


def test_mmbench_circular():
    metrics = run_metric(
        dict(type='dsvlm.MultipleChoiceAccuracy', circular='auto'),
        mmbench_samples())
    # Q0 wrong (3 of 4 rotations right), Q1 right, Q2 right -> 2/3
    assert metrics['accuracy'] == pytest.approx(2 / 3)
    assert metrics['num_questions'] == 3
    # ocr: Q0 wrong, Q1 right -> 1/2; logic: Q2 -> 1
    assert metrics['accuracy/category/ocr'] == pytest.approx(0.5)
    assert metrics['accuracy/category/logic'] == pytest.approx(1.0)
    assert metrics['accuracy/l2-category/perception'] == pytest.approx(0.5)
    assert metrics['accuracy/l2-category/reasoning'] == pytest.approx(1.0)
    # original rows alone: Q0, Q1, Q2 main rows all right -> 1
    assert metrics['vanilla_accuracy'] == pytest.approx(1.0)
    # all 10 rows on their own: 9 right
    assert metrics['vanilla_all_accuracy'] == pytest.approx(0.9)
    assert metrics['num_rows'] == 10 and metrics['num_scored'] == 10


def test_mmbench_without_circular():
    metrics = run_metric(MultipleChoiceAccuracy(circular=False),
                         mmbench_samples())
    # every row a question: 9 of 10; ocr rows 7 of 8; logic 2 of 2
    assert metrics['accuracy'] == pytest.approx(0.9)
    assert metrics['num_questions'] == 10
    assert metrics['accuracy/category/ocr'] == pytest.approx(7 / 8)
    assert metrics['accuracy/category/logic'] == pytest.approx(1.0)
    assert 'vanilla_accuracy' not in metrics


def test_auto_is_vanilla_without_rotated_rows():
    samples = [
        sample(0, 0, 'A', 'A', options=COLOURS, category='x'),
        sample(1, 1, 'B', 'It is blue', options=COLOURS, category='x'),
        sample(2, 2, 'B', 'red', options=COLOURS, category='y'),
    ]
    metrics = run_metric(MultipleChoiceAccuracy(), samples)
    # right, wrong (text 'blue' -> A), right -> 2/3; x: 1/2, y: 1/1
    assert metrics['accuracy'] == pytest.approx(2 / 3)
    assert metrics['accuracy/category/x'] == pytest.approx(0.5)
    assert metrics['accuracy/category/y'] == pytest.approx(1.0)
    assert 'vanilla_accuracy' not in metrics
    assert 'num_rows' not in metrics and metrics['num_scored'] == 3


def test_mmmu_open_question_becomes_a_choice():
    samples = [  # no options: A = the answer, B = 'Other Answers'
        sample(0, 0, '24', '24', benchmark='MMMU_DEV_VAL'),
        sample(1, 1, '24', '25', benchmark='MMMU_DEV_VAL'),
    ]
    metrics = run_metric(MultipleChoiceAccuracy(), samples)
    assert metrics['accuracy'] == pytest.approx(0.5)


def test_answer_outside_the_options_is_an_error():
    bad = sample(5, 5, 'E', 'A', benchmark='MMStar', options=COLOURS)
    with pytest.raises(ValueError, match=r"id='5'.*'MMStar'.*'E'"):
        MultipleChoiceAccuracy().process(None, [bad])


# --- shared: sample checks and coverage -----------------------------------

@pytest.mark.parametrize('metric', [MultipleChoiceAccuracy, MMEScore,
                                    POPEScore, HallusionBenchScore])
def test_sample_without_prediction_or_answer(metric):
    no_pred = sample(9, 0, 'A', None, benchmark='SomeBench',
                     options=COLOURS)
    with pytest.raises(ValueError, match=r"id='9'.*'SomeBench'.*pred_answer"):
        metric().process(None, [no_pred])
    no_gt = sample(8, 0, None, 'A', benchmark='SomeBench', options=COLOURS)
    with pytest.raises(ValueError, match=r"id='8'.*'SomeBench'.*gt_answer"):
        metric().process(None, [no_gt])


def test_partial_coverage_warns(logged_warnings):
    samples = pope_samples()[:3]  # 3 rows of a file of 8
    metrics = run_metric(POPEScore(), samples)
    assert metrics['num_rows'] == 8 and metrics['num_scored'] == 3
    assert any('scored 3 of 8 rows' in m and "'POPE'" in m
               for m in logged_warnings), logged_warnings


def test_full_coverage_does_not_warn(logged_warnings):
    run_metric(POPEScore(), pope_samples())
    assert not any('rows of benchmark' in m for m in logged_warnings)


def test_duplicate_rows_are_scored_once():
    samples = pope_samples()
    metrics = run_metric(POPEScore(), samples + samples[:2])
    assert metrics['num_scored'] == 8


# --- prediction file -------------------------------------------------------

def read_tsv(path):
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.DictReader(f, delimiter='\t')
        return reader.fieldnames, list(reader)


def test_prediction_file_round_trip(tmp_path):
    samples = mmbench_samples()
    # a prediction with a tab, a quote and a new line survives
    samples[0]['pred_answer'] = 'B.\tit is "a cat"\nreally'
    template = str(tmp_path / 'preds' / '{benchmark}.tsv')
    run_metric(dict(type='dsvlm.MultipleChoiceAccuracy',
                    prediction_file=template), samples)
    path = tmp_path / 'preds' / 'MMBench_DEV_EN.tsv'
    columns, rows = read_tsv(path)
    assert columns == ['index', 'question', 'answer', 'A', 'B', 'C', 'D',
                       'category', 'l2-category', 'prediction', 'extracted']
    # file order: 0, 1, 2, then the copies by index
    assert [r['index'] for r in rows] == [
        '0', '1', '2', '1000000', '1000001', '1000002', '2000000',
        '2000001', '3000000', '3000001']
    by_index = {r['index']: r for r in rows}
    assert by_index['1']['prediction'] == 'It is a cat'
    assert by_index['1']['extracted'] == 'A'
    last = samples[0]  # the last row of the file, processed first
    assert by_index[last['id']]['prediction'] == last['pred_answer']
    assert by_index['1000002']['B'] == 'yes'
    assert by_index['1000002']['C'] == ''  # a two-option question
    assert os.listdir(tmp_path / 'preds') == ['MMBench_DEV_EN.tsv']


def test_prediction_file_of_yes_no_metric(tmp_path):
    path = tmp_path / 'pope.tsv'
    run_metric(POPEScore(prediction_file=str(path)), pope_samples())
    columns, rows = read_tsv(path)
    assert columns == ['index', 'question', 'answer', 'category',
                       'prediction', 'extracted']
    assert [r['extracted'] for r in rows] == [
        'Yes', 'No', 'No', 'Yes', 'Yes', 'Unknown', 'Yes', 'Unknown']


def test_metrics_are_registered():
    for name in ('MultipleChoiceAccuracy', 'MMEScore', 'POPEScore',
                 'HallusionBenchScore'):
        assert METRICS.get(name) is not None
