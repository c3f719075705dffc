# Runtime shared by every dsvlm config: scope, hooks, environment, logging.
default_scope = 'dsvlm'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # One epoch is the whole run, so save by iteration.  Checkpoints hold the
    # trainable weights only (LlavaModel.save_trainable_only); the hook writes
    # `<work_dir>/last_checkpoint`, which a stage-2 `pretrained_pth` may name
    # by giving the stage-1 work_dir.  SafeCheckpointHook: CheckpointHook's
    # arguments, crash-safe saves (written aside, renamed when complete, old
    # ones removed after)
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False,
                    interval=1000, max_keep_ckpts=2, save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [
    dict(type='LocalVisBackend'),
    dict(type='TensorboardVisBackend'),
]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False, window_size=10)
log_level = 'INFO'

load_from = None
resume = False
randomness = dict(seed=42)
