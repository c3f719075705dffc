# DS-VLM stage 2: LLaVA-1.5 stage 2 with the encoder trained
# (instruct_encoder.py) plus the diffusion supervision.  The leaf's
# `pretrained_pth` names the DS-VLM stage-1 run (encoder, connector and
# supervisor).
_base_ = ['./instruct_encoder.py', '../supervisors/diffusion_sd15.py']

model = dict(supervisors=[_base_.diffusion_supervisor])
