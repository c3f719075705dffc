# Table 3, IS-all: the low, mid and high encoder layers, stage 2.
_base_ = ['../../clip_vicuna13b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, text_feature=False)],
    pretrained_pth='work_dirs/dsvlm/ablations/table3/is_all_pretrain')
