# DS-VLM stage 1: LLaVA-1.5 stage 1 with the encoder trained
# (pretrain_encoder.py) plus the diffusion supervision.
_base_ = ['./pretrain_encoder.py', '../supervisors/diffusion_sd15.py']

model = dict(supervisors=[_base_.diffusion_supervisor])
