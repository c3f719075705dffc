# LLaVA-1.5: vision encoder -> mlp2x_gelu connector -> LLM.
# The encoder and the LLM come from their own bases (`vision_encoder`, `llm`);
# a leaf config plugs them in:
#     model = dict(vision_encoder=_base_.vision_encoder, llm=_base_.llm)
# What trains is set by the stage (configs/_base_/schedules/*.py).
model = dict(
    type='LlavaModel',
    connector=dict(type='MLPConnector', depth=2, act='gelu'),
    connector_train_mode='full',
    pretrained_pth=None,
    supervisors=[],
    data_preprocessor=dict(type='VLMDataPreprocessor'),
)
