# Google SigLIP SO400M/14 at 384 px (428M parameters with its pooling head).
# SigLIP has no CLS token: LLaVA reads its patch tokens.
__encoder_dir = '{{$DSVLM_CHECKPOINTS:checkpoints}}/siglip-so400m-patch14-384'

vision_encoder = dict(
    type='HFVisionEncoder',
    model_type='siglip',
    pretrained=__encoder_dir,
    config=dict(  # SiglipVisionConfig of the checkpoint
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16, image_size=384, patch_size=14,
        hidden_act='gelu_pytorch_tanh', layer_norm_eps=1e-6),
    select_layer=-2,
    select_feature='patch',
)
image_processor = dict(type='pretrained_image_processor', path=__encoder_dir)
