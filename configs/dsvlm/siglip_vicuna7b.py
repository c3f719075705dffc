# DS-VLM, SigLIP-SO400M/384 + Vicuna-7B v1.5, stage 2: LLaVA-1.5 stage 2 with
# diffusion supervision.
_base_ = [
    '../_base_/models/siglip_so400m_14_384.py',
    '../_base_/models/vicuna7b.py',
    '../_base_/datasets/llava_instruct.py',
    '../_base_/schedules/dsvlm_instruct.py',
    '../_base_/default_runtime.py',
    '../_base_/strategies/deepspeed_zero3.py',
]

model = dict(
    vision_encoder=_base_.vision_encoder,
    llm=_base_.llm,
    # DS-VLM stage 1 (encoder, connector, supervisor): its newest checkpoint
    pretrained_pth='work_dirs/dsvlm/siglip_vicuna7b_pretrain')
