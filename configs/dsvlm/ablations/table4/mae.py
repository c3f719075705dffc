# Table 4, MAE: pixel L1 instead of the perceptual loss, stage 2.
_base_ = ['../../clip_vicuna7b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor,
                      loss=dict(type='L1ReconLoss'))],
    pretrained_pth='work_dirs/dsvlm/ablations/table4/mae_pretrain')
