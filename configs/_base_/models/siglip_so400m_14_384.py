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
    # Low/mid/high layers (1-based) that DS-VLM's supervisor reads:
    # * low/mid keep the paper's depths for CLIP-L, 8/24 and 16/24 of the
    #   tower, i.e. 9/27 and 18/27 (exact thirds);
    # * high is 26, not the proportional 27: 26 is the layer the connector
    #   reads (select_layer=-2, as CLIP-L's 24 lies next to its read layer
    #   23), so the deepest supervised layer is one whose output reaches the
    #   LLM.  SigLIP's 27th layer only feeds its attention-pooling head,
    #   trained for the contrastive objective; reconstruction gradient there
    #   would train a layer that inference never uses.
    feature_levels=dict(low=9, mid=18, high=26),
)
image_processor = dict(type='pretrained_image_processor', path=__encoder_dir)
# image features per image that the LLM sees: (384 // 14)^2 patches; the
# datasets count them when they truncate to max_length
num_image_tokens = 729
