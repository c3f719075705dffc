# LLaVA-1.5 stage 1 with the vision encoder trained too, at lr 2e-5
# (lr_mult 0.02 of 1e-3): how DS-VLM trains its encoder in stage 1, and
# the LLaVA baseline with a trainable encoder (paper, Table 7).
#
# The paper trains the encoder in both stages ("the encoder and connector
# receive the reconstruction gradient"; Appendix C, Table 9: the
# reconstruction loss stalls at 0.5 with a frozen encoder and reaches 0.1
# with encoder + adapter trainable).  It gives no encoder lr; ours is
# ShareGPT4V's stage-1 vision lr (2e-5) here and LLaVA-NeXT's (2e-6) in
# stage 2: the stage lrs would wreck a pretrained ViT.
_base_ = ['./pretrain.py']

model = dict(vision_encoder=dict(train_mode='full'))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'vision_encoder': dict(lr_mult=0.02)}))

# A trainable encoder has parameters that never get a gradient (CLIP's
# post-LayerNorm, SigLIP's pooling head and 27th layer): DDP must skip them.
find_unused_parameters = True
