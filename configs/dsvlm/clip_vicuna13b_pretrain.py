# DS-VLM, CLIP-L/336 + Vicuna-13B v1.5, stage 1: LLaVA-1.5 stage 1 with
# diffusion supervision.
_base_ = [
    '../_base_/models/clip_l14_336.py',
    '../_base_/models/vicuna13b.py',
    '../_base_/datasets/llava_pretrain.py',
    '../_base_/schedules/dsvlm_pretrain.py',
    '../_base_/default_runtime.py',
    '../_base_/strategies/deepspeed_zero2.py',
]

model = dict(vision_encoder=_base_.vision_encoder, llm=_base_.llm)
# the per-GPU batch that fits 80 GB (tools/inspect_model.py CONFIG --gpus 8);
# the global batch (256) stays
train_dataloader = dict(batch_size=8)
