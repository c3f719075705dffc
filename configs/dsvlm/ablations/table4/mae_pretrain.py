# Table 4, MAE: pixel L1 instead of the perceptual loss, stage 1.
_base_ = ['../../clip_vicuna7b_pretrain.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor,
                      loss=dict(type='L1ReconLoss'))])
