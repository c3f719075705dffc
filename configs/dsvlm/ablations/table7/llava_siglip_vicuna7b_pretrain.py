# Table 7, LLaVA-1.5 with a trainable encoder (SigLIP-SO400M/384 + Vicuna-7B),
# stage 1: no supervision, the encoder trained as DS-VLM trains it (lr 2e-5).
_base_ = [
    '../../../_base_/models/siglip_so400m_14_384.py',
    '../../../_base_/models/vicuna7b.py',
    '../../../_base_/datasets/llava_pretrain.py',
    '../../../_base_/schedules/pretrain_encoder.py',
    '../../../_base_/default_runtime.py',
    '../../../_base_/strategies/deepspeed_zero2.py',
]

model = dict(vision_encoder=_base_.vision_encoder, llm=_base_.llm)
