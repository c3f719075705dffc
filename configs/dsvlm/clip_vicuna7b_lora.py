# DS-VLM, CLIP-L/336 + Vicuna-7B v1.5, stage 2 with LoRA at the paper's
# rank 8 on every linear layer of the LLM (stage 1: clip_vicuna7b_pretrain).
_base_ = [
    '../_base_/models/clip_l14_336.py',
    '../_base_/models/vicuna7b.py',
    '../_base_/datasets/llava_instruct.py',
    '../_base_/schedules/dsvlm_instruct_lora.py',
    '../_base_/default_runtime.py',
    '../_base_/strategies/deepspeed_zero3.py',
]

model = dict(
    vision_encoder=_base_.vision_encoder,
    llm=_base_.llm,
    # DS-VLM stage 1 (encoder, connector, supervisor)
    pretrained_pth='work_dirs/dsvlm/clip_vicuna7b_pretrain')
