# The tiny LLaVA taught the benchmarks' answer formats, as LLaVA-1.5's
# instruction mix teaches them (A-OKVQA's multiple choice answered by the
# option's letter, VQAv2's short answers): a quarter of the training images
# also get a multiple-choice and a yes/no question.  Its own world, so the
# plain tiny world stays as it is:
#   python tools/train.py configs/tiny/llava_tiny_formats.py
#   python tools/test.py configs/tiny/llava_tiny_formats.py \
#       work_dirs/tiny/llava_tiny_formats --benchmark tiny_mcq \
#       --cfg-options test_dataloader.dataset.data_root=data/tiny_shapes_formats
_base_ = ['./llava_tiny.py']

data_root = 'data/tiny_shapes_formats'
world = dict(num_images_train=4000, num_images_test=400, image_size=32,
             train_scenes='per_scene', benchmark_formats=0.25)

tokenizer = dict(data_root=data_root, **world)
train_dataloader = dict(dataset=dict(data_root=data_root, world=world))
val_dataloader = dict(dataset=dict(data_root=data_root, world=world))
test_dataloader = val_dataloader
