# The built-in tiny world: LLaVA-1.5 on synthetic shapes, trained from scratch
# on a CPU in a few minutes, with no downloads.
#   python tools/train.py configs/tiny/llava_tiny.py
# On first use the world (images, LLaVA-format JSON, a local BPE tokenizer) is
# generated deterministically under `data_root`.  Every weight is random: the
# encoder, connector and LLM all train (a frozen random encoder sees nothing).
# The run ends with exact-match `accuracy` on held-out questions.
_base_ = ['../_base_/default_runtime.py']

data_root = 'data/tiny_shapes'
# 4000 training images, every training scene equally likely (most hold three
# objects: what teaches binding colour to shape); the held-out test scenes
# have 1, 2 and 3 objects equally often
world = dict(num_images_train=4000, num_images_test=400, image_size=32,
             train_scenes='per_scene')

tokenizer = dict(type='tiny_tokenizer', data_root=data_root, **world)
image_processor = dict(type='clip_image_processor', image_size=32)
# Vicuna's format without its 29-token system prompt, which would be a
# sixth of every tiny-world sequence and says nothing here
template = dict(name='vicuna_v1', system='')
max_length = 256
# (32 / 8)^2 patch features per image, counted within max_length
num_image_tokens = 16

model = dict(
    type='LlavaModel',
    vision_encoder=dict(
        type='HFVisionEncoder', model_type='clip', train_mode='full',
        config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=4, image_size=32, patch_size=8)),
    connector=dict(type='MLPConnector', depth=2, act='gelu'),
    llm=dict(
        type='HFCausalLM', train_mode='full',
        config=dict(model_type='llama', hidden_size=128,
                    intermediate_size=384, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4,
                    vocab_size=1024, max_position_embeddings=512,
                    tie_word_embeddings=True,
                    # embeddings of the scale of the image features: with
                    # the default 0.02 the tiny LLM learns to ignore images
                    initializer_range=0.1)),
    generation_cfg=dict(max_new_tokens=6),
    data_preprocessor=dict(type='VLMDataPreprocessor'),
)

train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    # batches of similar length: less padding than random batches; infinite,
    # so that the iteration-based loop never restarts the dataloader
    sampler=dict(type='LengthGroupedSampler', mega_batch_mult=8,
                 infinite=True),
    collate_fn=dict(type='llava_collate'),
    # processed once, then kept in memory: the 4000-image world is ~50 MB
    dataset=dict(type='ShapesWorldDataset', data_root=data_root,
                 split='instruct', world=world, cache_items=True))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='llava_collate'),
    dataset=dict(type='ShapesWorldDataset', data_root=data_root,
                 split='test', world=world, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='VQAExactMatch', group_key='question_type')
test_evaluator = val_evaluator

max_iters = 3000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# a step with a non-finite loss or gradient norm is skipped; 5 in a row
# stop the run (dsvlm/engine/optim_wrappers.py)
optim_wrapper = dict(
    type='FiniteStepOptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.0,
                   betas=(0.9, 0.98), fused=True),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0,
         end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters,
         eta_min=1e-5),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False,
                    interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
# The trained encoder's last layer and post-LayerNorm get no gradient (the
# connector reads layer -2): DDP must look for unused parameters.
find_unused_parameters = True
randomness = dict(seed=0)
visualizer = dict(type='Visualizer',
                  vis_backends=[dict(type='LocalVisBackend')])
