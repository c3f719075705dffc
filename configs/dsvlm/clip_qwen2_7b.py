# DS-VLM, CLIP-L/336 + Qwen2-7B-Instruct, stage 2: LLaVA-1.5 stage 2 plus
# diffusion supervision; the encoder trains too, at lr 2e-6.
_base_ = [
    '../llava/clip_qwen2_7b.py',
    '../_base_/supervisors/diffusion_sd15.py',
]

model = dict(
    vision_encoder=dict(train_mode='full'),
    supervisors=[_base_.diffusion_supervisor],
    # DS-VLM stage 1 (encoder, connector, supervisor): its newest checkpoint
    pretrained_pth='work_dirs/dsvlm/clip_qwen2_7b_pretrain',
)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'vision_encoder': dict(lr_mult=0.1)}))
work_dir = 'work_dirs/dsvlm/clip_qwen2_7b'
# the per-GPU batch that fits 80 GB under the default strategy (memory
# plan: tools/inspect_model.py CONFIG --gpus 8); the global batch (128) stays
train_dataloader = dict(batch_size=8)
