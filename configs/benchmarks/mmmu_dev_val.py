# MMMU (dev+val); its open questions become VLMEvalKit's two-option form (A =
# the answer, B = other answers).
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/MMMU_DEV_VAL.tsv',
    prompt_style='multiple_choice'))
test_evaluator = dict(type='MultipleChoiceAccuracy', circular=False,
                      prediction_file=_base_.prediction_file)
