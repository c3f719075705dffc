# LLaVA-1.5-13B (CLIP-L/336 + Vicuna-13B v1.5), stage 2: instruction tuning.
_base_ = [
    '../_base_/models/clip_l14_336.py',
    '../_base_/models/vicuna13b.py',
    '../_base_/datasets/llava_instruct.py',
    '../_base_/schedules/instruct.py',
    '../_base_/default_runtime.py',
    '../_base_/strategies/deepspeed_zero3.py',
]

model = dict(
    vision_encoder=_base_.vision_encoder,
    llm=_base_.llm,
    # stage 1's connector: the newest checkpoint in that run's work_dir
    pretrained_pth='work_dirs/llava/clip_vicuna13b_pretrain',
)
