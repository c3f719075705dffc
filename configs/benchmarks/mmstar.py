# MMStar (1,500 vision-indispensable multiple-choice questions).
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/MMStar.tsv',
    prompt_style='multiple_choice'))
test_evaluator = dict(type='MultipleChoiceAccuracy', circular=False,
                      prediction_file=_base_.prediction_file)
