# MME: accuracy and accuracy+ per sub-task (x100), summed into perception and
# cognition.
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/MME.tsv',
    prompt_style='yes_no'))
test_evaluator = dict(type='MMEScore',
                      prediction_file=_base_.prediction_file)
