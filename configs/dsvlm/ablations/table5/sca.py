# Table 5, SCA: all features through the UNet's own cross-attention, stage 2.
_base_ = ['../../clip_vicuna13b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, cross_attention='shared')],
    pretrained_pth='work_dirs/dsvlm/ablations/table5/sca_pretrain')
