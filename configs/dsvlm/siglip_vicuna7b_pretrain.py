# DS-VLM, SigLIP-SO400M/384 + Vicuna-7B v1.5, stage 1: LLaVA-1.5 stage 1 plus
# diffusion supervision; the encoder trains too, at lr 2e-5.
_base_ = [
    '../llava/siglip_vicuna7b_pretrain.py',
    '../_base_/supervisors/diffusion_sd15_siglip.py',
]

model = dict(
    vision_encoder=dict(train_mode='full'),
    supervisors=[_base_.diffusion_supervisor],
)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'vision_encoder': dict(lr_mult=0.02)}))
work_dir = 'work_dirs/dsvlm/siglip_vicuna7b_pretrain'
# the per-GPU batch that fits 80 GB under the default strategy (memory
# plan: tools/inspect_model.py CONFIG --gpus 8); the global batch (256) stays
train_dataloader = dict(batch_size=16)
