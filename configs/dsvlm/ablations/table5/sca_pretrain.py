# Table 5, SCA: all features through the UNet's own cross-attention, stage 1.
_base_ = ['../../clip_vicuna13b_pretrain.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, cross_attention='shared')])
