# The paper's "50 iterations": the reconstruction denoises each image in 50
# DDIM steps, with gradient through all of them, stage 1.
_base_ = ['../../clip_vicuna7b_pretrain.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, sampling_steps=50,
                      timestep_range=(49, 1000),
                      gradient_checkpointing=True)])
# 50 UNet passes of activations per image (checkpointed): the per-GPU batch
# that fits 80 GB (tools/inspect_model.py CONFIG --gpus 8); global batch kept
train_dataloader = dict(batch_size=8)
