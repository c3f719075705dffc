# LLaVA-1.5 stage 2 (visual instruction tuning): connector + the whole LLM.
_base_ = ['./pretrain.py']

model = dict(llm=dict(train_mode='full'))

global_batch_size = 128
optim_wrapper = dict(optimizer=dict(lr=2e-5))
