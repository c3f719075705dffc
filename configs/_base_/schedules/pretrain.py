# LLaVA-1.5 stage 1 (feature alignment): train the connector only.
# A stage decides what trains, so it extends the LLaVA model base; the leaf
# config adds the encoder and the LLM.
_base_ = ['../models/llava.py']

model = dict(
    vision_encoder=dict(train_mode='frozen'),
    connector_train_mode='full',
    llm=dict(train_mode='frozen', gradient_checkpointing=True),
)

# The recipe's batch: 256 samples per optimizer step, whatever the number of
# processes (dsvlm.engine.config.complete_config turns it into
# optim_wrapper.accumulative_counts from train_dataloader.batch_size).
global_batch_size = 256
max_length = 2048

# bf16 autocast with fp32 master weights (LLaVA: --bf16 True).  A step with
# a non-finite loss or gradient norm is skipped, and 5 in a row stop the run
# (nonfinite='stop', max_consecutive_nonfinite=5: optim_wrappers.py).
optim_wrapper = dict(
    type='FiniteStepAmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.0),
    clip_grad=dict(max_norm=1.0),
)

# Linear warm-up over the first 3% of the epoch, then cosine to 0 (stepped
# every iteration).
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0,
         end=0.03, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0.03,
         end=1, convert_to_iter_based=True),
]

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1)
val_cfg = None
