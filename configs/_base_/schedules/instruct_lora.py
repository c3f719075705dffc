# LLaVA-1.5 stage 2 with LoRA: connector + LoRA adapters on every linear
# layer of the LLM (peft's 'all-linear' leaves out lm_head, as LLaVA does).
_base_ = ['./instruct.py']

model = dict(
    llm=dict(
        train_mode='lora',
        lora_cfg=dict(r=128, lora_alpha=256, lora_dropout=0.05,
                      target_modules='all-linear', bias='none')))

# lr 2e-4 for the adapters, 2e-5 for the connector (LLaVA's mm_projector_lr).
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={'connector': dict(lr_mult=0.1)}))
