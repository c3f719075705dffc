# DeepSpeed ZeRO-2 (LLaVA's stage-1 choice): optimizer state and gradients
# are partitioned over the ranks, every rank keeps the whole model.
# complete_config fills the micro-batch, gradient accumulation, clipping and
# bf16 from the config's dataloader, global_batch_size and optim_wrapper.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='DeepSpeedZeroStrategy',
    zero_optimization=dict(
        stage=2,
        overlap_comm=True,
        contiguous_gradients=True,
        reduce_bucket_size='auto',
        allgather_bucket_size=5e8))
