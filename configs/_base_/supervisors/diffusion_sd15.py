# DS-VLM's diffusion supervision with Stable Diffusion 1.5, as the paper uses
# it (DiffusionSupervisor, dsvlm/models/supervisors/).
#
# Defines the top-level `diffusion_supervisor`; the DS-VLM stages
# (schedules/dsvlm_pretrain.py, dsvlm_instruct.py) plug it in, and an
# ablation replaces it with a changed copy:
#     model = dict(supervisors=[dict(_base_.diffusion_supervisor, ...)])
#
# * Features: the connector output (text, TS) and the encoder's low/mid/high
#   layers (image, IS; `vision_encoder.feature_levels`: 8/16/24 of CLIP-L's
#   24, 9/18/26 of SigLIP's 27).
# * Multi-Adapter Diffusion: one linear adapter per feature into the UNet's
#   cross-attention width (768), MoE cross-attention (ICA) in all 16 `attn2`
#   layers; UNet and VAE frozen.  Trainable: adapters, new K/V, routers.
# * Loss: LPIPS-VGG (perceptual) on the VAE decode of the one-step
#   clean-latent estimate, at 256 px.  The target image is the encoder's
#   input with the image processor's normalisation undone (the model passes
#   its mean and std along with the features).
#
# The UNet/VAE architectures are SD-1.5's (config.json of
# runwayml/stable-diffusion-v1-5), written here only: weights come from
# `pretrained`, the architectures let tools/inspect_model.py build the
# supervisor on the meta device.  UNet 859.52M, VAE 83.65M.
__sd15_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/stable-diffusion-v1-5'

diffusion_supervisor = dict(
    type='DiffusionSupervisor',
    pretrained=__sd15_dir,  # unet/ vae/ scheduler/ subfolders
    unet=dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D',
                          'CrossAttnDownBlock2D', 'DownBlock2D'),
        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D',
                        'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D')),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), sample_size=512,
        down_block_types=('DownEncoderBlock2D', ) * 4,
        up_block_types=('UpDecoderBlock2D', ) * 4, scaling_factor=0.18215),
    text_feature=True,
    image_layers=('low', 'mid', 'high'),  # levels of the encoder
    cross_attention='moe',
    adapter=dict(type='mlp'),  # LayerNorm + Linear
    loss=dict(
        type='PerceptualReconLoss',
        vgg_checkpoint='{{$DSVLM_CHECKPOINTS:checkpoints}}/'
        'vgg16-397923af.pth'),
    loss_weight=1.0,
    image_size=256,
    sampling_steps=1,
    unet_train_mode='frozen',
    vae_train_mode='frozen',
)

# TensorBoard: original | one-step reconstruction, and the mean MoE router
# weights P0..P3 of every cross-attention layer, every 500 iterations.
custom_hooks = [dict(type='ReconVisualizationHook', interval=500)]
