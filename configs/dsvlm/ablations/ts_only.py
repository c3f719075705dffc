# Table 3, TS: the connector output only (no encoder layer).
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor, text_feature=True, image_layers={})])
