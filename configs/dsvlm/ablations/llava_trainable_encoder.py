# Table 7: LLaVA-1.5 stage 2 (no supervision) with the encoder trained, at
# DS-VLM's stage-2 encoder lr (2e-6): what training the encoder alone gives.
_base_ = ['../../llava/clip_vicuna7b.py']

model = dict(vision_encoder=dict(train_mode='full'))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'vision_encoder': dict(lr_mult=0.1)}))
# CLIP's post-LayerNorm and last layer get no gradient (LLaVA reads layer 23)
find_unused_parameters = True
