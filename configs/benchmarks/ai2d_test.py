# AI2D (test): science diagrams, multiple choice.
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/AI2D_TEST.tsv',
    prompt_style='multiple_choice'))
test_evaluator = dict(type='MultipleChoiceAccuracy', circular=False,
                      prediction_file=_base_.prediction_file)
