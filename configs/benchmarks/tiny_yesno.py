# The tiny world's yes/no benchmark in MME's layout: two questions per
# held-out image, one Yes and one No (accuracy and accuracy+), written from
# the world a tiny config trained on:
#   python tools/test.py configs/tiny/llava_tiny.py work_dirs/tiny/llava_tiny \
#       --benchmark tiny_yesno
_base_ = ['./_tsv_benchmark.py']

test_dataloader = dict(
    batch_size=32,
    num_workers=0,
    dataset=dict(_delete_=True, type='TinyBenchmarkDataset',
                 data_root='data/tiny_shapes', benchmark='yesno'))
test_evaluator = dict(type='MMEScore',
                      prediction_file=_base_.prediction_file)
