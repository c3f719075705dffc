# The tiny world with DS-VLM's diffusion supervision, on a CPU.
#   python tools/train.py configs/tiny/dsvlm_tiny.py
# Same data, models, seed and steps as llava_tiny.py, plus a diffusion
# supervisor reconstructing each image from the connector output (text
# modality) and encoder layers 1/2/3 (low/mid/high of the 4-layer tiny ViT)
# through MoE cross-attention.
#
# Differences from the paper's recipe, forced by the tiny world:
# * there is no pretrained Stable Diffusion at this size, so the tiny UNet
#   and VAE are random and TRAINABLE here (the paper freezes SD-1.5);
# * the loss is pixel MAE: LPIPS needs a pretrained VGG-16 (a random trunk
#   measures nothing) and costs more than the whole tiny model on a CPU.
_base_ = ['./llava_tiny.py']

diffusion_supervisor = dict(
    type='DiffusionSupervisor',
    unet=dict(sample_size=16, in_channels=4, out_channels=4,
              layers_per_block=1, block_out_channels=(32, 64),
              cross_attention_dim=64, attention_head_dim=8,
              norm_num_groups=8,
              down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
              up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D')),
    vae=dict(in_channels=3, out_channels=3, latent_channels=4,
             layers_per_block=1, block_out_channels=(16, 32),
             norm_num_groups=8, sample_size=32,
             down_block_types=('DownEncoderBlock2D', ) * 2,
             up_block_types=('UpDecoderBlock2D', ) * 2),
    text_feature=True,
    image_layers=dict(low=1, mid=2, high=3),
    cross_attention='moe',
    adapter=dict(type='mlp'),
    loss=dict(type='L1ReconLoss'),
    loss_weight=1.0,
    image_size=32,
    max_images=4,  # reconstruct 4 images of each batch of 32: CPU budget
    unet_train_mode='full',
    vae_train_mode='full')
model = dict(supervisors=[diffusion_supervisor])

custom_hooks = [dict(type='ReconVisualizationHook', interval=200)]
visualizer = dict(type='Visualizer',
                  vis_backends=[dict(type='LocalVisBackend'),
                                dict(type='TensorboardVisBackend')])
