"""FLOPs of one training step of a VLM, split by part, counted on the meta
device with ``torch.utils.flop_counter`` (no weights, no compute).

The step is the one :meth:`LlavaModel.loss` runs, rebuilt part by part so
that nothing needs the values a meta tensor does not have (where a sample's
image token sits, which labels are supervised):

* ``vision_encoder``, ``connector``: the batch's images;
* ``llm``: the decoder over ``text_tokens + num_image_tokens`` positions
  and the LM head over ``supervised_tokens`` of them
  (``supervised_logits_only``) or all of them;
* per supervisor (``DiffusionSupervisor``), over the images it
  reconstructs (``max_images``): ``adapters`` (the conditions),
  ``vae_encode``, ``unet`` (every pass: ``sampling_steps``),
  ``vae_decode`` and ``loss_network`` (the reconstruction loss, e.g.
  LPIPS's VGG), named ``supervisors.<i>.<part>``.

Each part runs on detached copies of its inputs (:class:`PartRecorder`),
and the backward runs part by part in reverse, so each part's forward and
backward FLOPs are its own, gradient checkpointing's recomputation
included.  The backward of a part is what the real step runs: gradients
reach a frozen part only when something before it trains (a frozen UNet
passes gradients to the adapters; a frozen encoder of a LLaVA stage 1 gets
none).  Elementwise work (noise, normalisation, the optimizer) is not
counted: ``torch.utils.flop_counter`` counts matrix products, convolutions
and attention, which dominate.
"""
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode

from dsvlm.models.features import VisualFeatures

LLAVA_PARTS = ('vision_encoder', 'connector', 'llm')
SUPERVISOR_PARTS = ('adapters', 'vae_encode', 'unet', 'vae_decode',
                    'loss_network')
# (text tokens, supervised tokens) of a typical sample: a LLaVA-558K caption
# (a BLIP caption of about 12 words) and a LLaVA-665K conversation (a few
# short VQA turns or one longer GPT-4 answer).  Give check_data's median
# with --text-tokens for your own data.
TYPICAL_TEXT_TOKENS = dict(pretrain=(32, 24), instruct=(256, 128))


@dataclass
class StepShape:
    """The batch of one micro-step (every sample with an image)."""
    batch_size: int
    text_tokens: int  # per sample, the image token excluded
    supervised_tokens: int  # per sample, at most text_tokens
    image_size: int


@dataclass
class PartFlops:
    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


class PartRecorder:
    """Runs a step part by part and counts each part's FLOPs.

    ``recorder(name, fn)(*args)`` runs ``fn`` on detached copies of its
    tensor arguments (each keeping whether it needs a gradient), so that
    each part has a graph of its own; :meth:`backward` then runs the
    backward part by part, in reverse order, handing each part's input
    gradients to the parts that produced those inputs.  A name may repeat
    (several UNet passes): its FLOPs add up.
    """

    def __init__(self):
        self.segments = []
        self.flops: 'OrderedDict[str, PartFlops]' = OrderedDict()

    def __call__(self, name: str, fn: Callable) -> Callable:
        def run(*args):
            leaves = tree_map(_detached_leaf, args)
            with FlopCounterMode(display=False) as counter:
                out = fn(*leaves)
            self.segments.append((name, args, leaves, out))
            self.flops.setdefault(name, PartFlops()).forward += \
                counter.get_total_flops()
            return out
        return run

    def backward(self, losses: Sequence[torch.Tensor]) -> None:
        """The backward of ``sum(losses)``, part by part."""
        grads = {id(loss): torch.ones_like(loss) for loss in losses
                 if loss.requires_grad}
        for name, args, leaves, out in reversed(self.segments):
            outputs = {id(t): t for t in tree_leaves(out)
                       if isinstance(t, torch.Tensor) and id(t) in grads}
            if not outputs:
                continue
            with FlopCounterMode(display=False) as counter:
                torch.autograd.backward(
                    list(outputs.values()),
                    [grads.pop(key) for key in outputs])
            self.flops[name].backward += counter.get_total_flops()
            for given, leaf in zip(tree_leaves(args), tree_leaves(leaves)):
                if isinstance(leaf, torch.Tensor) and leaf.grad is not None:
                    key = id(given)
                    grads[key] = grads[key] + leaf.grad if key in grads \
                        else leaf.grad


def _detached_leaf(value):
    if not isinstance(value, torch.Tensor):
        return value
    return value.detach().requires_grad_(value.requires_grad)


def count_parts(step: Callable[[PartRecorder], Sequence[torch.Tensor]]
                ) -> 'OrderedDict[str, PartFlops]':
    """FLOPs of ``step(part)`` by part: ``step`` calls
    ``part(name, fn)(*args)`` for each part and returns the losses, whose
    backward is counted too.  Tensors pass from part to part as they are
    (what happens between two parts is not counted, and a gradient reaches
    a part only through its own outputs): the losses are outputs of
    parts."""
    recorder = PartRecorder()
    with _fused_attention_on_meta():
        recorder.backward(step(recorder))
    return recorder.flops


@contextlib.contextmanager
def _fused_attention_on_meta():
    """On the meta device ``scaled_dot_product_attention`` decomposes into
    matrix products whose backward costs 2x the forward; the fused kernels
    a real step runs (flash, memory-efficient, CPU's) recompute the scores
    in the backward: 2.5x.  Count those: meta attention goes through the
    memory-efficient kernel's op, which has a meta implementation."""
    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0,
              is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != 'meta':
            return original(query, key, value, attn_mask=attn_mask,
                            dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        groups = query.shape[-3] // key.shape[-3]
        if groups > 1:  # grouped-query attention: no FLOPs to repeat K/V
            key = key.repeat_interleave(groups, dim=-3)
            value = value.repeat_interleave(groups, dim=-3)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype,
                                    device='meta')
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, query.requires_grad or
            key.requires_grad or value.requires_grad, dropout_p, is_causal,
            scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def llava_step_flops(model, shape: StepShape
                     ) -> 'OrderedDict[str, PartFlops]':
    """FLOPs of one training micro-step of ``model`` (a :class:`LlavaModel`
    built on the meta device), by part."""
    def step(part):
        pixel_values = torch.zeros(shape.batch_size, 3, shape.image_size,
                                   shape.image_size, device='meta')
        tokens, hidden = part('vision_encoder', model.vision_encoder)(
            pixel_values)
        connected = part('connector', model.connector)(tokens)
        with _no_packed_sequence_check():
            losses = [part('llm', _llm_loss(model.llm, shape))(connected)]
        for i, supervisor in enumerate(model.supervisors):
            losses += _supervisor_losses(
                supervisor, shape, pixel_values, hidden, connected,
                lambda name, fn, i=i: part(f'supervisors.{i}.{name}', fn))
        return losses
    return count_parts(step)


def _llm_loss(llm, shape: StepShape) -> Callable:
    def run(image_features):
        text = llm.embed_tokens(torch.zeros(
            shape.batch_size, shape.text_tokens, dtype=torch.long,
            device='meta'))
        embeds = torch.cat([text[:, :1], image_features.to(text.dtype),
                            text[:, 1:]], dim=1)
        # no padding: the causal mask alone (a padding mask needs values)
        hidden = llm.model.get_decoder()(
            inputs_embeds=embeds, use_cache=False).last_hidden_state
        positions = shape.supervised_tokens if getattr(
            llm, 'supervised_logits_only', False) else hidden.shape[1]
        logits = llm.model.get_output_embeddings()(hidden[:, -positions:])
        return logits.float().logsumexp(-1).mean()
    return run


@contextlib.contextmanager
def _no_packed_sequence_check():
    """transformers looks at the position ids' values for packed sequences
    when there is no padding mask; meta tensors have none (and the batch
    packs nothing)."""
    from transformers import masking_utils
    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def _supervisor_losses(supervisor, shape: StepShape, pixel_values, hidden,
                       connected, part) -> list:
    """:meth:`DiffusionSupervisor.loss`, part by part, on the meta
    device."""
    rows = shape.batch_size if supervisor.max_images is None else \
        min(shape.batch_size, supervisor.max_images)

    def features(connector_output, *hidden_states):
        return VisualFeatures(
            pixel_values=pixel_values[:rows],
            encoder_hidden_states=tuple(h[:rows] for h in hidden_states),
            encoder_tokens=None, connector_output=connector_output[:rows],
            has_image=None, image_mean=(0.5, ) * 3, image_std=(0.5, ) * 3)

    every_row = torch.ones(rows, dtype=torch.bool, device='meta')
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        # a boolean row mask selects by value; on meta, all rows
        conds = part('adapters', lambda c, *h: supervisor.conditions(
            features(c, *h), every_row))(connected, *hidden)
        target = supervisor.target_images(features(connected, *hidden),
                                          every_row)
    latents = part('vae_encode', supervisor.encode_latents)(target)
    timesteps = torch.zeros(rows, dtype=torch.long, device='meta')
    unet = part('unet', lambda x, *c: supervisor._unet(list(c))(
        x, timesteps))
    output = x0 = unet(latents, *conds)
    for _ in range(supervisor.sampling_steps - 1):
        x0 = unet(x0, *conds)
    recon = None
    if supervisor.recon_loss.needs_images:
        recon = part('vae_decode', supervisor.decode_latents)(x0).float()
    losses = part('loss_network', lambda r, t, o: supervisor.recon_loss(
        r, t, noise=o, noise_pred=o))(recon, target.float(), output.float())
    return list(losses.values())


def summarize(parts: 'OrderedDict[str, PartFlops]') -> Dict[str, float]:
    """Totals: the VLM's step, the supervision's, and its overhead."""
    vlm = sum(p.total for n, p in parts.items() if n in LLAVA_PARTS)
    supervision = sum(p.total for n, p in parts.items()
                      if n.startswith('supervisors.'))
    return dict(vlm=vlm, supervision=supervision,
                overhead=supervision / vlm if vlm else float('nan'))


def default_shape(cfg, image_size: int, text_tokens: Optional[int] = None,
                  supervised_tokens: Optional[int] = None) -> StepShape:
    """The config's micro-batch; text lengths default to a typical sample
    of its stage (:data:`TYPICAL_TEXT_TOKENS`)."""
    from dsvlm.engine.config import leaf_datasets
    datasets = list(leaf_datasets(cfg.train_dataloader.dataset))
    template = datasets[0].get('template') or cfg.get('template')
    name = template if isinstance(template, str) else (template or {}).get(
        'name')
    typical = TYPICAL_TEXT_TOKENS['pretrain' if name == 'plain' else
                                  'instruct']
    text = text_tokens or typical[0]
    return StepShape(batch_size=cfg.train_dataloader.batch_size,
                     text_tokens=text,
                     supervised_tokens=min(text, supervised_tokens or
                                           typical[1]),
                     image_size=image_size)
