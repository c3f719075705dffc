# Table 4, MAE: pixel L1 reconstruction loss instead of the perceptual one.
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor, loss=dict(type='L1ReconLoss'))])
