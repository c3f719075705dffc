# Table 9, frozen encoder: only the adapters, new K/V, routers and the
# connector learn from the reconstruction, stage 2.
_base_ = ['../../clip_vicuna7b.py']

model = dict(
    vision_encoder=dict(train_mode='frozen'),
    pretrained_pth='work_dirs/dsvlm/ablations/table9/frozen_encoder_pretrain')
