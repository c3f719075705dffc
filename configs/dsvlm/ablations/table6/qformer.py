# Table 6, Q-Former adapters (32 queries, 2 layers, 8 heads), stage 2.
_base_ = ['../../clip_vicuna13b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor, adapter=dict(
        type='qformer', num_queries=32, depth=2, num_heads=8))],
    pretrained_pth='work_dirs/dsvlm/ablations/table6/qformer_pretrain')
