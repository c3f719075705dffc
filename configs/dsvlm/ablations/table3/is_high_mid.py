# Table 3, IS-high+mid: the high and mid encoder layers, stage 2.
_base_ = ['../../clip_vicuna13b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, text_feature=False,
                      image_layers=('mid', 'high'))],
    pretrained_pth='work_dirs/dsvlm/ablations/table3/is_high_mid_pretrain')
