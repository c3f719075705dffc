# Table 9, frozen encoder: only the adapters, new K/V, routers and the
# connector learn from the reconstruction, stage 1.
_base_ = ['../../clip_vicuna7b_pretrain.py']

model = dict(
    vision_encoder=dict(train_mode='frozen'))
