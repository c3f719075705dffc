"""A trained :class:`~dsvlm.models.LlavaModel` as transformers'
``LlavaForConditionalGeneration``.

The target is built by the installed transformers from a ``LlavaConfig``
(vision config and text config of our own towers), and each of its parts
loads the state dict of the part it replaces, strictly: the vision tower
(``CLIPVisionModel``/``SiglipVisionModel`` both sides), the projector
(``linear_1``/``linear_2`` from the MLP connector's two linear layers), the
decoder and the LM head.  No weight key is written by hand, and a part that
does not fit fails loudly.  LoRA adapters are merged first; supervisors
(the diffusion branch) are never exported.

What the format cannot express fails with a message: a connector other
than a two-layer MLP with an activation transformers knows, an encoder other
than :class:`HFVisionEncoder`, an LLM other than :class:`HFCausalLM`.
"""
import torch
from torch import nn

from dsvlm.models.connectors.mlp import ACTIVATIONS, MLPConnector
from dsvlm.models.llms.hf_causal_lm import HFCausalLM
from dsvlm.models.vision_encoders.hf_vision_encoder import HFVisionEncoder

# our activation name -> transformers' ACT2FN name of the same function
_HF_ACTIVATIONS = dict(gelu='gelu', relu='relu', silu='silu')


class ExportError(ValueError):
    """The model has a part the transformers LLaVA format cannot express."""


def select_strategy(encoder: HFVisionEncoder) -> str:
    """``vision_feature_select_strategy``: ``'default'`` drops CLS."""
    if encoder.has_cls_token and encoder.select_feature == 'patch':
        return 'default'
    return 'full'


def activation_name(connector: MLPConnector) -> str:
    """The ``ACTIVATIONS`` name of the two-layer MLP's activation."""
    return next(k for k, v in ACTIVATIONS.items()
                if isinstance(connector.layers[1], v))


def check_exportable(model) -> None:
    encoder, connector, llm = model.vision_encoder, model.connector, model.llm
    if not isinstance(encoder, HFVisionEncoder):
        raise ExportError(f'vision encoder {type(encoder).__name__}: only '
                          'HFVisionEncoder (CLIP, SigLIP) can be exported')
    if not isinstance(llm, HFCausalLM):
        raise ExportError(f'LLM {type(llm).__name__}: only HFCausalLM can be '
                          'exported')
    linears = [m for m in getattr(connector, 'layers', ())
               if isinstance(m, nn.Linear)]
    if type(connector) is not MLPConnector or len(linears) != 2:
        raise ExportError(
            f'connector {type(connector).__name__} '
            f'({len(linears)} linear layers): LlavaForConditionalGeneration '
            'has a two-layer MLP projector only (MLPConnector, depth=2)')
    act = activation_name(connector)
    if act not in _HF_ACTIVATIONS:
        raise ExportError(f'connector activation {act!r} has no '
                          'transformers equivalent')
    if linears[0].bias is None or linears[1].bias is None:
        raise ExportError('a projector without biases cannot be exported')


def _merged(module: nn.Module) -> nn.Module:
    """``module`` with its LoRA adapters merged (a copy), or itself."""
    from peft import PeftModel
    if isinstance(module, PeftModel):
        import copy
        return copy.deepcopy(module).merge_and_unload()
    return module


def llava_config(model, image_token_id: int, vocab_size: int):
    """The ``LlavaConfig`` of ``model`` (LoRA changes no config: the
    base models' configs are those of the merged ones)."""
    from transformers import LlavaConfig
    encoder, llm = model.vision_encoder, model.llm
    text_config = llm.config.to_dict()
    text_config['vocab_size'] = vocab_size
    return LlavaConfig(
        vision_config=encoder.config.to_dict(), text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=encoder.num_tokens,
        projector_hidden_act=_HF_ACTIVATIONS[activation_name(
            model.connector)],
        vision_feature_select_strategy=select_strategy(encoder),
        vision_feature_layer=encoder.select_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_config.get('tie_word_embeddings')))


@torch.no_grad()
def to_hf_llava(model, image_token_id: int):
    """``LlavaForConditionalGeneration`` with ``model``'s weights (in its
    LLM's dtype); the embeddings grow to hold ``image_token_id`` when they
    do not (new rows: transformers' mean initialisation)."""
    from transformers import LlavaForConditionalGeneration
    check_exportable(model)
    lm = _merged(model.llm.model)
    tower = _merged(model.vision_encoder.tower)
    rows = lm.get_input_embeddings().weight.shape[0]
    config = llava_config(model, image_token_id, rows)
    dtype = lm.get_input_embeddings().weight.dtype
    hf = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    hf.model.vision_tower.load_state_dict(tower.state_dict())
    linears = [m for m in model.connector.layers if isinstance(m, nn.Linear)]
    projector = hf.model.multi_modal_projector
    projector.linear_1.load_state_dict(linears[0].state_dict())
    projector.linear_2.load_state_dict(linears[1].state_dict())
    hf.model.language_model.load_state_dict(lm.get_decoder().state_dict())
    hf.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    hf.tie_weights()
    if image_token_id >= rows:
        hf.resize_token_embeddings(image_token_id + 1)
    return hf.eval()
