# PyTorch FSDP2 (torch.distributed.fsdp.fully_shard): the LLM is sharded per
# decoder layer (the encoder too when it trains), bf16 parameters with fp32
# gradient reduction (from the config's AmpOptimWrapper dtype), activation
# checkpointing; checkpoints are torch.distributed.checkpoint directories,
# one shard per rank.  Frozen parts (a frozen encoder, DS-VLM's UNet, VAE
# and VGG) are replicated on every rank unless shard_frozen=True.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDP2Strategy',
    activation_checkpointing=True,
    shard_frozen=False)
