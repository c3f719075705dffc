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
    )
    if encoder_mode == 'lora':
        cfg['vision_encoder']['lora_cfg'] = dict(
            r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'])
    if llm_mode == 'lora':
        cfg['llm']['lora_cfg'] = dict(r=4, lora_alpha=8,
                                      target_modules='all-linear')
    cfg.update(overrides)
    return cfg
