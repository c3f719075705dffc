# LLaVA-1.5 stage 2 with the vision encoder trained too, at lr 2e-6
# (lr_mult 0.1 of 2e-5; see pretrain_encoder.py): DS-VLM's stage 2, and the
# LLaVA baseline with a trainable encoder (paper, Table 7).
_base_ = ['./instruct.py']

model = dict(vision_encoder=dict(train_mode='full'))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'vision_encoder': dict(lr_mult=0.1)}))

# CLIP's post-LayerNorm and last layer (LLaVA reads layer 23), SigLIP's
# pooling head and 27th layer get no gradient: DDP must skip them.
find_unused_parameters = True
