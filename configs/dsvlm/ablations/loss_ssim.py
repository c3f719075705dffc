# Table 4, SSIM: structural reconstruction loss (1 - SSIM).
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor, loss=dict(type='SSIMReconLoss'))])
