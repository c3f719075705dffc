# OpenAI CLIP ViT-L/14 at 336 px, LLaVA-1.5's vision tower (303.5M parameters
# without CLIP's text projection).  The image processor reads the same
# directory, so both follow DSVLM_CHECKPOINTS.
__encoder_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/clip-vit-large-patch14-336'

vision_encoder = dict(
    type='HFVisionEncoder',
    model_type='clip',
    pretrained=__encoder_dir,
    config=dict(  # CLIPVisionConfig of the checkpoint, for weightless builds
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
        num_attention_heads=16, image_size=336, patch_size=14,
        projection_dim=768, hidden_act='quick_gelu', layer_norm_eps=1e-5),
    select_layer=-2,
    select_feature='patch',
)
image_processor = dict(type='pretrained_image_processor', path=__encoder_dir)
# image features per image that the LLM sees: (336 / 14)^2 patches, no CLS;
# the datasets count them when they truncate to max_length
num_image_tokens = 576
