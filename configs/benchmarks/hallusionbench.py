# HallusionBench: question-, figure- and all-level accuracy (qAcc, fAcc, aAcc).
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(dataset=dict(
    data_file=_base_.lmu_data + '/HallusionBench.tsv',
    prompt_style='yes_no'))
test_evaluator = dict(type='HallusionBenchScore',
                      prediction_file=_base_.prediction_file)
