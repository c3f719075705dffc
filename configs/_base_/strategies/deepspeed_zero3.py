# DeepSpeed ZeRO-3 (LLaVA's stage-2 choice): parameters, gradients and
# optimizer state are partitioned; each layer's parameters are gathered for
# its forward and backward.  Checkpoints stay sharded (one file per rank);
# tools/convert_checkpoint.py makes a plain one.  'auto' values are filled
# from the LLM's hidden size, as transformers' Trainer does.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='DeepSpeedZeroStrategy',
    zero_optimization=dict(
        stage=3,
        overlap_comm=True,
        contiguous_gradients=True,
        sub_group_size=1e9,
        reduce_bucket_size='auto',
        stage3_prefetch_bucket_size='auto',
        stage3_param_persistence_threshold='auto',
        stage3_max_live_parameters=1e9,
        stage3_max_reuse_distance=1e9,
        stage3_gather_16bit_weights_on_model_save=False))
