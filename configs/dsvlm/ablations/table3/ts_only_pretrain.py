# Table 3, TS: the connector output only, stage 1.
_base_ = ['../../clip_vicuna13b_pretrain.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, image_layers=())])
