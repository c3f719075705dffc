# Table 3, IS-high+mid: the high and mid encoder layers, stage 1.
_base_ = ['../../clip_vicuna13b_pretrain.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, text_feature=False,
                      image_layers=('mid', 'high'))])
