# Stage 1 of the tiny world, as LLaVA-1.5 does it: captions with the `plain`
# template, only the connector trains.  Stage 2 loads its connector with
#   python tools/train.py configs/tiny/llava_tiny.py \
#       --cfg-options model.pretrained_pth=work_dirs/tiny/llava_tiny_pretrain
# (With random weights a connector-only stage teaches the tiny world little;
# it is here to exercise the two-stage chain.)
_base_ = ['./llava_tiny.py']

model = dict(vision_encoder=dict(train_mode='frozen'),
             llm=dict(train_mode='frozen'))
train_dataloader = dict(dataset=dict(split='pretrain', template='plain'))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0,
         end=10),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=10, end=max_iters,
         eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
