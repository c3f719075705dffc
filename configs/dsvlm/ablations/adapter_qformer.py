# Table 6, Q-Former adapters: 32 learned queries, 2 decoder layers, 8 heads
# (BLIP-2's 32 queries; a shallow stack, four adapters are built).
_base_ = ['./ts_is_all.py']

model = dict(supervisors=[
    dict(_base_.diffusion_supervisor,
         adapter=dict(type='qformer', num_queries=32, depth=2, num_heads=8))])
