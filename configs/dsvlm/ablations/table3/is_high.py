# Table 3, IS-high: the high encoder layer only, stage 2.
_base_ = ['../../clip_vicuna13b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, text_feature=False,
                      image_layers=('high', ))],
    pretrained_pth='work_dirs/dsvlm/ablations/table3/is_high_pretrain')
