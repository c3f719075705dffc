# MMBench (dev, Chinese), circular evaluation.
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/MMBench_DEV_CN.tsv',
    prompt_style='multiple_choice'))
test_evaluator = dict(type='MultipleChoiceAccuracy', circular=True,
                      prediction_file=_base_.prediction_file)
