# DS-VLM's diffusion supervision with Stable Diffusion 1.5, as the paper uses
# it for CLIP-L/14-336 (DiffusionSupervisor, dsvlm/models/supervisors/).
#
# Defines the top-level `diffusion_supervisor`; a DS-VLM leaf lists this base
# next to its LLaVA config and plugs it in:
#     model = dict(supervisors=[_base_.diffusion_supervisor])
#
# * Features: the connector output (text, TS) and CLIP encoder layers 8/16/24
#   (image, IS low/mid/high; 1-based, of 24); SigLIP: diffusion_sd15_siglip.py
# * Multi-Adapter Diffusion: one linear adapter per feature into the UNet's
#   cross-attention width (768), MoE cross-attention (ICA) in all 16 `attn2`
#   layers; UNet and VAE frozen.  Trainable: adapters, new K/V, routers.
# * Loss: LPIPS-VGG (perceptual) on the VAE decode of the one-step
#   clean-latent estimate, at 256 px.
# * The encoder trains, in both stages: the paper's recipe ("the encoder and
#   connector receive the reconstruction gradient"; Appendix C, Table 9: the
#   reconstruction loss stalls at 0.5 with a frozen encoder and reaches 0.1
#   with encoder + adapter trainable; Table 7 compares with LLaVA trained the
#   same way).  The paper gives no encoder lr; ours is 2e-5 in stage 1
#   (lr_mult 0.02 of 1e-3; ShareGPT4V's stage-1 vision lr) and 2e-6 in stage 2
#   (lr_mult 0.1 of 2e-5; LLaVA-NeXT's vision lr): the stage lrs would wreck a
#   pretrained ViT.  A sibling base cannot set `model` or `optim_wrapper`
#   (they come from the LLaVA leaf), so each DS-VLM leaf states both.
#
# The UNet/VAE architectures are SD-1.5's (config.json of
# runwayml/stable-diffusion-v1-5, = diffusion_parts.SD15_UNET/SD15_VAE):
# weights come from `pretrained`, the architectures let tools/inspect_model.py
# build the supervisor on the meta device.  UNet 859.52M, VAE 83.65M.
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
    image_layers=dict(low=8, mid=16, high=24),
    cross_attention='moe',
    adapter=dict(type='mlp'),  # LayerNorm + Linear
    loss=dict(
        type='PerceptualReconLoss',
        vgg_checkpoint='{{$DSVLM_CHECKPOINTS:checkpoints}}/'
        'vgg16-397923af.pth'),
    loss_weight=1.0,
    image_size=256,
    # image_mean/image_std: OpenAI CLIP's (the supervisor's defaults)
    sampling_steps=1,
    unet_train_mode='frozen',
    vae_train_mode='frozen',
)

# A trainable encoder has parameters that never get a gradient (CLIP's
# post-LayerNorm, SigLIP's pooling head and 27th layer): DDP must skip them.
find_unused_parameters = True

# TensorBoard: original | one-step reconstruction, and the mean MoE router
# weights P0..P3 of every cross-attention layer, every 500 iterations.
custom_hooks = [dict(type='ReconVisualizationHook', interval=500)]
