# Table 3, TS: the connector output only, stage 2.
_base_ = ['../../clip_vicuna13b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, image_layers=())],
    pretrained_pth='work_dirs/dsvlm/ablations/table3/ts_only_pretrain')
