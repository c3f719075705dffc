"""A VLM's training micro-step rebuilt part by part, for counting and
timing each part (:mod:`.step_flops`, :mod:`.step_timing`).

The step is the one :meth:`LlavaModel.loss` runs on a batch where every
sample has ``text_tokens`` text tokens and an image, rebuilt from its parts
so that nothing needs the values of the batch (where a sample's image token
sits, which labels are supervised; meta tensors have none):

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
backward are its own, gradient checkpointing's recomputation included.
The backward of a part is what the real step runs: gradients reach a frozen
part only when something before it trains (a frozen UNet passes gradients
to the adapters; a frozen encoder of a LLaVA stage 1 gets none).  What
happens between parts (noise, normalisation) is elementwise and left out.
"""
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
import torch.fx.experimental._config as fx_config
from torch.utils._pytree import tree_leaves, tree_map

from dsvlm.models.features import VisualFeatures


@dataclass
class StepShape:
    """The batch of one micro-step (every sample with an image)."""
    batch_size: int
    text_tokens: int  # per sample, the image token excluded
    supervised_tokens: int  # per sample, at most text_tokens
    image_size: int


class PartRecorder:
    """Runs a step part by part and measures each part with ``meter``.

    ``recorder(name, fn)(*args)`` runs ``fn`` on detached copies of its
    tensor arguments (each keeping whether it needs a gradient), so that
    each part has a graph of its own; :meth:`backward` then runs the
    backward part by part, in reverse order, handing each part's input
    gradients to the parts that produced those inputs.  A name may repeat
    (several UNet passes): its FLOPs add up.
    """

    def __init__(self, meter: Callable[[], ContextManager]):
        """``meter()`` is a context manager whose value, when it has
        exited, is ``.value`` (FLOPs, seconds...)."""
        self.meter = meter
        self.segments = []
        self.forward: 'OrderedDict[str, float]' = OrderedDict()
        self.backward: 'OrderedDict[str, float]' = OrderedDict()

    def __call__(self, name: str, fn: Callable) -> Callable:
        def run(*args):
            leaves = tree_map(_detached_leaf, args)
            with self.meter() as measured:
                out = fn(*leaves)
            self.segments.append((name, args, leaves, out))
            self.forward[name] = self.forward.get(name, 0) + measured.value
            return out
        return run

    def backward_losses(self, losses: Sequence[torch.Tensor]) -> None:
        """The backward of ``sum(losses)``, part by part."""
        grads = {id(loss): torch.ones_like(loss) for loss in losses
                 if loss.requires_grad}
        for name, args, leaves, out in reversed(self.segments):
            outputs = {id(t): t for t in tree_leaves(out)
                       if isinstance(t, torch.Tensor) and id(t) in grads}
            if not outputs:
                continue
            with self.meter() as measured:
                torch.autograd.backward(
                    list(outputs.values()),
                    [grads.pop(key) for key in outputs])
            self.backward[name] = self.backward.get(name, 0) + measured.value
            for given, leaf in zip(tree_leaves(args), tree_leaves(leaves)):
                if isinstance(leaf, torch.Tensor) and leaf.grad is not None:
                    key = id(given)
                    grads[key] = grads[key] + leaf.grad if key in grads \
                        else leaf.grad

    def run(self, step: Callable) -> None:
        """Run ``step(self)`` (which returns the losses) and its
        backward."""
        self.backward_losses(step(self))


def _detached_leaf(value):
    if not isinstance(value, torch.Tensor):
        return value
    return value.detach().requires_grad_(value.requires_grad)


def llava_step(model, shape: StepShape, device) -> Callable:
    """One training micro-step of ``model`` (a :class:`LlavaModel`) on a
    batch of ``shape`` on ``device``, as a function of ``part`` (see
    :class:`PartRecorder`) that returns the losses."""
    def step(part):
        pixel_values = torch.zeros(shape.batch_size, 3, shape.image_size,
                                   shape.image_size, device=device)
        tokens, hidden = part('vision_encoder', model.vision_encoder)(
            pixel_values)
        connected = part('connector', model.connector)(tokens)
        with _no_packed_sequence_check():
            losses = [part('llm', _llm_loss(model.llm, shape, device))(
                connected)]
        for i, supervisor in enumerate(model.supervisors):
            losses += _supervisor_losses(
                supervisor, shape, pixel_values, hidden, connected,
                lambda name, fn, i=i: part(f'supervisors.{i}.{name}', fn))
        return losses
    return step


def _llm_loss(llm, shape: StepShape, device) -> Callable:
    def run(image_features):
        text = llm.embed_tokens(torch.zeros(
            shape.batch_size, shape.text_tokens, dtype=torch.long,
            device=device))
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

    every_row = torch.ones(rows, dtype=torch.bool,
                           device=pixel_values.device)
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        # a boolean row mask selects by value; on meta, all rows
        conds = part('adapters', lambda c, *h: supervisor.conditions(
            features(c, *h), every_row))(connected, *hidden)
        target = supervisor.target_images(features(connected, *hidden),
                                          every_row)
    latents = part('vae_encode', supervisor.encode_latents)(target)
    timesteps = torch.full((rows, ), supervisor.timestep_range[0],
                           dtype=torch.long, device=pixel_values.device)
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


