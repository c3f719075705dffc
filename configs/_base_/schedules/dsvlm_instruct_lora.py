# DS-VLM stage 2 with LoRA, as the paper states it: rank 8 on every linear
# layer of the LLM (peft's 'all-linear', lm_head left out as LLaVA does).
# The paper gives no alpha or lr: alpha = 2 x rank (LLaVA's ratio) and
# LLaVA's LoRA lrs, 2e-4 for the adapters (and the supervisor's adapters,
# K/V and routers), 2e-5 for the connector; the encoder keeps DS-VLM's
# stage-2 lr, 2e-6.
_base_ = ['./dsvlm_instruct.py']

model = dict(
    llm=dict(
        train_mode='lora',
        lora_cfg=dict(r=8, lora_alpha=16, lora_dropout=0.05,
                      target_modules='all-linear', bias='none')))
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={
        'connector': dict(lr_mult=0.1),
        'vision_encoder': dict(lr_mult=0.01)}))
