# POPE (adversarial, popular, random): accuracy, precision, recall, F1, yes-
# ratio.
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/POPE.tsv',
    prompt_style='yes_no'))
test_evaluator = dict(type='POPEScore',
                      prediction_file=_base_.prediction_file)
