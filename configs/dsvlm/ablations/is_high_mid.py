# Table 3, IS-high+mid: encoder layers 16 and 24 (no connector output).
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor, text_feature=False,
         image_layers=dict(mid=16, high=24))])
