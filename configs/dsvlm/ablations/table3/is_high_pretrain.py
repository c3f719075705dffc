# Table 3, IS-high: the high encoder layer only, stage 1.
_base_ = ['../../clip_vicuna13b_pretrain.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, text_feature=False,
                      image_layers=('high', ))])
