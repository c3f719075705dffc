# Table 3, IS-high: encoder layer 24 only (no connector output).
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor, text_feature=False,
         image_layers=dict(high=24))])
