# DS-VLM, CLIP-L/336 + Vicuna-7B v1.5 on the Mini-Gemini data, stage 1:
# MGM's 1.2M captions with diffusion supervision.
_base_ = [
    '../_base_/models/clip_l14_336.py',
    '../_base_/models/vicuna7b.py',
    '../_base_/datasets/mini_gemini_pretrain.py',
    '../_base_/schedules/dsvlm_pretrain.py',
    '../_base_/default_runtime.py',
    '../_base_/strategies/deepspeed_zero2.py',
]

model = dict(vision_encoder=_base_.vision_encoder, llm=_base_.llm)
# the per-GPU batch that fits 80 GB; the global batch (256) stays
train_dataloader = dict(batch_size=16)
