"""Tiny random-weight VLM configs for the tests."""
import copy

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=2, image_size=32, patch_size=8)
TINY_LLAMA = dict(model_type='llama', hidden_size=48, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=120,
                  max_position_embeddings=256)


def tiny_vlm_cfg(encoder_mode='full', llm_mode='full', **overrides):
    cfg = dict(
        type='LlavaModel',
        vision_encoder=dict(type='HFVisionEncoder', model_type='clip',
                            config=copy.deepcopy(TINY_CLIP),
                            train_mode=encoder_mode),
        connector=dict(type='MLPConnector', depth=2),
        llm=dict(type='HFCausalLM', config=copy.deepcopy(TINY_LLAMA),
                 train_mode=llm_mode),
        # OpenAI CLIP's normalisation, which supervisors undo
        image_processor=dict(type='clip_image_processor', image_size=32),
    )
    if encoder_mode == 'lora':
        cfg['vision_encoder']['lora_cfg'] = dict(
            r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'])
    if llm_mode == 'lora':
        cfg['llm']['lora_cfg'] = dict(r=4, lora_alpha=8,
                                      target_modules='all-linear')
    cfg.update(overrides)
    return cfg

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4,
                 layers_per_block=1, block_out_channels=(32, 64),
                 cross_attention_dim=32, attention_head_dim=8,
                 norm_num_groups=8,
                 down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                 up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
                layers_per_block=1, block_out_channels=(16, 32),
                norm_num_groups=8, sample_size=32,
                down_block_types=('DownEncoderBlock2D', ) * 2,
                up_block_types=('UpDecoderBlock2D', ) * 2)


def tiny_supervisor_cfg(**overrides):
    """A diffusion supervisor on the tiny CLIP (3 layers) of tiny_vlm_cfg."""
    cfg = dict(type='DiffusionSupervisor', unet=copy.deepcopy(TINY_UNET),
               vae=copy.deepcopy(TINY_VAE),
               image_layers=dict(low=1, mid=2, high=3), image_size=16,
               loss=dict(type='L1ReconLoss'))
    cfg.update(overrides)
    return cfg
