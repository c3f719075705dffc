# The tiny world's LoRA variant: LoRA (DS-VLM's rank 8, alpha 16) on every
# linear layer of the LLM of a trained tiny LLaVA, the connector and encoder
# training in full, as LLaVA's LoRA recipe does on top of stage 1:
#   python tools/train.py configs/tiny/llava_tiny.py
#   python tools/train.py configs/tiny/llava_tiny_lora.py
# The tiny LLM has no pretrained directory: its frozen base weights come
# from llava_tiny's checkpoint, so checkpoints hold every weight
# (save_trainable_only=False), and the export merges the adapters into them.
_base_ = ['./llava_tiny.py']

model = dict(
    pretrained_pth='work_dirs/tiny/llava_tiny',
    llm=dict(train_mode='lora',
             lora_cfg=dict(r=8, lora_alpha=16, lora_dropout=0.05,
                           target_modules='all-linear', bias='none')),
    save_trainable_only=False)

max_iters = 500
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0,
         end=10),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=10, end=max_iters,
         eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
