# DeepSpeed ZeRO-3 with parameters and optimizer state offloaded to CPU
# memory: fits where ZeRO-3 does not (fewer or smaller GPUs), at the cost of
# host-device traffic every step.
_base_ = ['./deepspeed_zero3.py']

strategy = dict(
    zero_optimization=dict(
        offload_optimizer=dict(device='cpu', pin_memory=True),
        offload_param=dict(device='cpu', pin_memory=True)))
