# The tiny world's multiple-choice benchmark: one question per held-out
# image, its options rotated MMBench-style (circular evaluation), written
# from the world a tiny config trained on:
#   python tools/test.py configs/tiny/llava_tiny.py work_dirs/tiny/llava_tiny \
#       --benchmark tiny_mcq
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(
    batch_size=32,
    num_workers=0,
    dataset=dict(_delete_=True, type='TinyBenchmarkDataset',
                 data_root='data/tiny_shapes', benchmark='mcq'))
test_evaluator = dict(type='MultipleChoiceAccuracy', circular=True,
                      prediction_file=_base_.prediction_file)
