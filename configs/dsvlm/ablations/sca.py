# Table 5, SCA: all features concatenated into the UNet's own
# cross-attention, instead of the MoE (independent) cross-attention.
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor, cross_attention='shared')])
