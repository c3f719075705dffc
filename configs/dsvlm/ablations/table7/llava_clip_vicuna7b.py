# Table 7, LLaVA-1.5 with a trainable encoder (CLIP-L/336 + Vicuna-7B), stage
# 2: no supervision, the encoder trained as DS-VLM trains it (lr 2e-6).
_base_ = [
    '../../../_base_/models/clip_l14_336.py',
    '../../../_base_/models/vicuna7b.py',
    '../../../_base_/datasets/llava_instruct.py',
    '../../../_base_/schedules/instruct_encoder.py',
    '../../../_base_/default_runtime.py',
    '../../../_base_/strategies/deepspeed_zero3.py',
]

model = dict(
    vision_encoder=_base_.vision_encoder,
    llm=_base_.llm,
    pretrained_pth='work_dirs/dsvlm/ablations/table7/'
    'llava_clip_vicuna7b_pretrain')
