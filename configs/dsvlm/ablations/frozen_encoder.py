# Table 9, frozen encoder: only the adapters, new K/V and routers (and the
# connector) learn from the reconstruction loss.
_base_ = ['./ts_is_all.py']

model = dict(vision_encoder=dict(train_mode='frozen'))
