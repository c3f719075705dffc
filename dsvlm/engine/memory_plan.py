"""Per-GPU training memory, planned from parameter counts, a strategy and
batch sizes, before a long run (``tools/inspect_model.py --strategy``).

Pure functions: no model is built here; the tool counts the parameters on
the meta device and reads the architecture sizes.  Everything is in bytes.

**Model states**, bytes per parameter (``Precision``): a trainable one
holds weight + gradient + optimizer state, a frozen one its weight only.

* ``bf16`` (DeepSpeed bf16/fp16): 2 (bf16 weight) + 2 (bf16 gradient) +
  12 (fp32 master weight + Adam m, v); frozen 2.
* ``bf16-fsdp2`` (FSDP2 ``mixed_precision``): the fp32 shard is the master,
  so 4 + 4 (fp32 reduced gradient) + 8 (Adam); gathered copies in bf16;
  frozen 2 (the strategy casts what it leaves unsharded).
* ``amp`` (DDP with ``AmpOptimWrapper``: bf16 autocast over fp32 weights):
  4 + 4 + 8; frozen 4 (dsvlm builds components in fp32 unless they set
  ``dtype``).
* ``fp32`` (no AMP): 4 + 4 + 8; frozen 4.

bf16 mixed precision is 16 B per trainable parameter whatever the split.
DeepSpeed (bf16/fp16) keeps its gradient partition in fp32 as well, as its
own estimators count: ZeRO-2 ``2 + 18/N`` (bf16 weights whole; 2 B bf16 +
4 B fp32 gradients, 12 B fp32 master + Adam, partitioned), ZeRO-3
``4·largest_layer + 18/N`` (2 B weights, 4 B fp32 gradients, 12 B,
partitioned; the bf16 gradients exist for the gathered layer only).

* **DDP**: everything replicated; with more than one process DDP's
  buckets hold a second copy of the gradients (MMEngine does not set
  ``gradient_as_bucket_view``).
* **ZeRO-2**: parameters replicated, gradients and optimizer partitioned
  over all GPUs.  Offload: only the bf16 parameters stay on the GPU.
* **ZeRO-3 / FSDP2**: all partitioned, plus what is gathered whole at a
  time (``ParamCounts.gathered``: DeepSpeed's largest layer, FSDP2's root
  plus its largest block) in compute precision, with its gradient.  Offload
  (ZeRO-3) moves the optimizer state and gradients (``offload_optimizer``)
  and the parameter partitions (``offload_param``) to CPU memory.
* **Frozen parameters** are outside DeepSpeed's estimators, which assume
  that everything trains: they are added on top, at ``frozen`` bytes,
  replicated where the strategy keeps them whole (DDP, ZeRO-2, ZeRO-3's
  ``replicate_frozen`` parts: by default the encoder, connector and
  supervisors, not a frozen LLM under LoRA; FSDP2 without
  ``shard_frozen``) and partitioned otherwise.  With no frozen parameter
  the GPU (and, with offload, CPU) figures equal DeepSpeed's
  ``estimate_zero2/3_model_states_mem_needs`` to the byte (ZeRO-3 with
  ``zero_init``, ``additional_buffer_factor`` 1.5).

**Activations** (an estimate) for micro-batch ``b`` and sequence ``s``
(``max_length``; image tokens are part of it: the model truncates the
spliced sequence), per transformer layer, in bytes, for 2-byte values
(Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models": ``s·b·h·(34 + 5·a·s/h)`` with dropout and a GeLU 4h
MLP), adjusted to what these models save:

    s·b·h·[(7 + 4·kv/a) attention (their 11 at kv = a)
           + norms (their 4 for LayerNorm; 12 for transformers' RMSNorm,
             which keeps an fp32 copy of its input)
           + 2 + 2·k·f/h MLP (k f-wide tensors: GeLU 2, quick-GeLU 3,
             SwiGLU 4)]  (+ 5·a·s/h·s·b·h without SDPA/flash attention)

(measured on the meta device with saved-tensor hooks: 47.6·sbh for a
Vicuna-7B layer, 42.1 for CLIP-L, 33.0 for SigLIP; the formula gives 46.5,
41.0, 31.9).  With gradient checkpointing a model keeps its layer inputs
(``L·b·s·h`` values of the residual stream: 2 B, 4 B under ``amp``, whose
fp32 weights make it fp32) plus one layer recomputed in backward;
without, every layer.  LoRA with dropout adds a dropped copy and a mask of
each adapted layer's input (``3·(6 + f/h)·sbh``).  Logits: all ``s``
positions in fp32 (``b·s·V·4``), an upper bound: dsvlm applies the LM head
only at supervised positions (stage 1: the caption; stage 2: the answers).
The vision encoder counts only when it trains (one image per sample;
``tokens`` = patches + CLS), the connector when it trains.

The DS-VLM supervisor (SD-1.5 UNet + VAE decoder + LPIPS-VGG, one step) is
estimated coarsely from one measurement: saved tensors per image at 256 px
on the meta device with flash attention (``SUPERVISOR_MIB_PER_IMAGE``),
scaled by the image area and, for the UNet, the sampling steps.

A fixed ``ALLOWANCE_GIB`` covers the CUDA context, NCCL and cuBLAS
workspaces, the engines' communication buckets and allocator
fragmentation.
"""
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Optional

GiB = 1 << 30
MiB = 1 << 20
ALLOWANCE_GIB = 4.0
DEEPSPEED_BUFFER_FACTOR = 1.5  # DeepSpeed's estimators' default
DEEPSPEED_FP32_GRAD = 4  # DeepSpeed's fp32 gradient partition
LOGIT_BYTES = 4
# measured: saved tensors per image at 256 px, bf16, flash attention
SUPERVISOR_MIB_PER_IMAGE = dict(
    conditions=20,  # adapters, MoE keys/values of the features
    unet=430,  # one UNet pass; x sampling_steps (N-step: N passes in all)
    unet_checkpointed=80,  # block inputs + one block recomputed
    vae_decoder=710,  # the VAE decode the image loss needs
    perceptual=245)  # LPIPS-VGG on prediction and target


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter held on a rank (see the module docstring)."""
    name: str
    param: int
    grad: int
    optimizer: int
    frozen: int
    compute: int  # gathered (ZeRO-3/FSDP2) parameter and gradient copies
    activation: int  # bytes of an activation value
    residual: int  # bytes of the residual stream (checkpointed inputs)


PRECISIONS = {p.name: p for p in (
    Precision('bf16', 2, 2, 12, 2, 2, 2, 2),
    Precision('bf16-fsdp2', 4, 4, 8, 2, 2, 2, 2),
    Precision('amp', 4, 4, 8, 4, 4, 2, 4),
    Precision('fp32', 4, 4, 8, 4, 4, 4, 4))}
STRATEGY_KINDS = ('ddp', 'zero2', 'zero3', 'fsdp2')


@dataclass(frozen=True)
class Strategy:
    """What the memory plan needs to know of a distributed strategy."""
    kind: str  # one of STRATEGY_KINDS
    offload_optimizer: bool = False
    offload_param: bool = False
    zero_init: bool = True

    def __post_init__(self):
        if self.kind not in STRATEGY_KINDS:
            raise ValueError(f'strategy kind {self.kind!r}; choose one of '
                             f'{", ".join(STRATEGY_KINDS)}')
        if (self.offload_optimizer or self.offload_param) and \
                self.kind not in ('zero2', 'zero3'):
            raise ValueError(f'{self.kind}: offload is planned for DeepSpeed '
                             'ZeRO-2/3 only')
        if self.offload_param and (self.kind != 'zero3'
                                   or not self.offload_optimizer):
            raise ValueError('offload_param is planned for ZeRO-3 with '
                             'offload_optimizer (as DeepSpeed estimates it)')


def _enabled(value) -> bool:
    return bool(value.get('enabled', True)) if isinstance(value, dict) \
        else bool(value)


def strategy_from_config(cfg):
    """``(Strategy, Precision)`` of a (completed) config: its top-level
    ``strategy`` (none or ``runner_type='Runner'``: DDP) and the precision
    it trains in (DeepSpeed's ``bf16``/``fp16``, FSDP2's
    ``mixed_precision``, else an ``AmpOptimWrapper``)."""
    from .strategy_config import mmengine_wrapper_type, strategy_kind
    kind = strategy_kind(cfg)
    strategy = cfg.get('strategy') or {}
    optim = cfg.get('optim_wrapper') or {}
    amp = mmengine_wrapper_type(optim.get('type')) == 'AmpOptimWrapper'
    if kind == 'ddp' or cfg.get('runner_type', 'Runner') == 'Runner':
        return Strategy('ddp'), PRECISIONS['amp' if amp else 'fp32']
    if kind == 'fsdp2':
        mixed = strategy.get('mixed_precision')
        mixed = amp if mixed is None else bool(mixed) and dict(mixed).get(
            'param_dtype') not in (None, 'float32', 'fp32')
        return Strategy('fsdp2'), PRECISIONS['bf16-fsdp2' if mixed
                                             else 'fp32']
    if kind != 'deepspeed':
        raise ValueError(f'strategy.type={strategy.get("type")!r}: the memory'
                         ' plan knows DeepSpeed ZeRO-2/3, FSDP2 and DDP')
    zero = strategy.get('zero_optimization') or {}
    stage = int(zero.get('stage', 0))
    if stage not in (2, 3):
        raise ValueError(f'strategy.zero_optimization.stage={stage}: the '
                         'memory plan knows stages 2 and 3')
    half = [k for k in ('bf16', 'fp16') if k in strategy]
    mixed = any(_enabled(strategy[k]) for k in half) if half else amp

    def offloaded(key):
        device = (zero.get(key) or {}).get('device', 'none')
        return device not in (None, 'none')

    return (Strategy(f'zero{stage}', offloaded('offload_optimizer'),
                     offloaded('offload_param')),
            PRECISIONS['bf16' if mixed else 'fp32'])


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    frozen_replicated: int = 0
    frozen_sharded: int = 0
    gathered: int = 0  # ZeRO-3/FSDP2: parameters gathered whole at a time


@dataclass
class Share:
    """Bytes on each rank: ``replicated`` + ``sharded`` / number of GPUs."""
    replicated: int = 0
    sharded: int = 0

    def per_rank(self, world: int) -> float:
        return self.replicated + self.sharded / world


def model_states(counts: ParamCounts, strategy: Strategy,
                 precision: Precision, gpus_per_node: int = 1,
                 nodes: int = 1) -> dict:
    """GPU ``params``/``grads``/``optimizer`` as :class:`Share`, and ``cpu``:
    host bytes per node for offloaded states (0 without offload)."""
    p, t, world = precision, counts.trainable, gpus_per_node * nodes
    params = Share(p.param * t + p.frozen * counts.frozen_replicated)
    grads, optim, cpu = Share(p.grad * t), Share(p.optimizer * t), 0
    if strategy.kind == 'ddp':
        if world > 1:  # DDP's gradient buckets
            grads.replicated *= 2
        return dict(params=params, grads=grads, optimizer=optim, cpu=cpu)
    grad = p.grad
    if strategy.kind == 'zero2' and p.name == 'bf16':
        grad += DEEPSPEED_FP32_GRAD  # and the fp32 partition
    elif strategy.kind == 'zero3' and p.name == 'bf16':
        grad = DEEPSPEED_FP32_GRAD  # the fp32 partition only
    grads = Share(sharded=grad * t)
    optim = Share(sharded=p.optimizer * t)
    factor = DEEPSPEED_BUFFER_FACTOR
    if strategy.kind == 'zero2':
        if strategy.offload_optimizer:
            grads, optim = Share(), Share()
            cpu = int(t * max(4 * world, 16) * factor)
        return dict(params=params, grads=grads, optimizer=optim, cpu=cpu)
    # ZeRO-3 / FSDP2: shards, the gathered copies, frozen where they are
    params = Share(p.compute * counts.gathered +
                   p.frozen * counts.frozen_replicated,
                   p.param * t + p.frozen * counts.frozen_sharded)
    grads.replicated = p.compute * counts.gathered
    if strategy.offload_optimizer:
        grads.sharded, optim = 0, Share()
        per_param, per_node = (18 if strategy.offload_param else 16), 1 / nodes
        if strategy.zero_init:  # DeepSpeed's order of operations
            cpu = int(t * per_param * per_node * factor)
        else:
            cpu = int(t * max(4 * gpus_per_node, per_param * per_node) *
                      factor)
        if strategy.offload_param:  # frozen partitions move along
            params.sharded = 0
            cpu += p.frozen * counts.frozen_sharded // nodes
    return dict(params=params, grads=grads, optimizer=optim, cpu=cpu)


# ---------------------------------------------------------------- activations
@dataclass(frozen=True)
class Transformer:
    """Sizes of a transformer stack for the activation estimate."""
    hidden: int
    layers: int
    heads: int
    intermediate: int
    kv_heads: Optional[int] = None
    mlp_tensors: int = 2  # f-wide tensors an MLP saves (SwiGLU 4)
    rms_norm: bool = False
    flash: bool = True  # SDPA/flash attention: no a·s² term
    checkpointing: bool = False
    vocab: int = 0  # > 0: a causal LM head over the sequence
    lora_dropout: bool = False


def layer_bytes(m: Transformer, tokens: int, precision: Precision) -> float:
    """Saved activations of one layer for ``tokens`` (= s·b) tokens."""
    h, f, a = m.hidden, m.intermediate, m.heads
    units = (7 + 4 * (m.kv_heads or a) / a + (12 if m.rms_norm else 4) +
             2 + 2 * m.mlp_tensors * f / h +
             (3 * (6 + f / h) if m.lora_dropout else 0))
    return tokens * h * units * precision.activation / 2


def transformer_activations(m: Transformer, batch: int, seq: int,
                            precision: Precision) -> dict:
    """Per-component activation bytes of ``batch`` sequences of ``seq``."""
    tokens = batch * seq
    layer = layer_bytes(m, tokens, precision)
    if not m.flash:  # softmax, its dropout mask and output: 5·a·s²·b
        layer += 5 * m.heads * seq * tokens * precision.activation / 2
    out = {}
    if m.checkpointing:
        out['layer_inputs'] = m.layers * tokens * m.hidden * precision.residual
        out['recomputed_layer'] = layer
    else:
        out['layers'] = m.layers * layer
    if m.vocab:
        out['logits'] = tokens * m.vocab * LOGIT_BYTES
    return out


def supervisor_activations(images: int, image_size: int = 256,
                           sampling_steps: int = 1, images_loss: bool = True,
                           perceptual: bool = True,
                           unet_checkpointing: bool = False) -> float:
    """A coarse estimate of the diffusion supervisor's saved activations
    (see ``SUPERVISOR_MIB_PER_IMAGE``), ``images`` reconstructed per step."""
    mib = SUPERVISOR_MIB_PER_IMAGE
    unet = mib['unet_checkpointed'] if unet_checkpointing else mib['unet']
    per_image = mib['conditions'] + unet * sampling_steps
    if images_loss:
        per_image += mib['vae_decoder'] + (mib['perceptual'] if perceptual
                                           else 0)
    return images * per_image * (image_size / 256)**2 * MiB


# ---------------------------------------------------------------- the plan
@dataclass
class MemoryPlan:
    """Bytes per GPU (``cpu``: per node) of one training configuration."""
    strategy: str
    precision: str
    gpus_per_node: int
    nodes: int
    batch: int
    params: float
    grads: float
    optimizer: float
    model_states: int  # params + grads + optimizer, whole bytes
    activations: Dict[str, float]
    allowance: float
    cpu: int
    gpu_mem: float
    notes: list = field(default_factory=list)

    @property
    def activation_total(self) -> float:
        return sum(self.activations.values())

    @property
    def total(self) -> float:
        return self.model_states + self.activation_total + self.allowance

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_mem

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(activation_total=self.activation_total, total=self.total,
                   fits=self.fits)
        return out


def plan(counts: ParamCounts, strategy: Strategy, precision: Precision,
         activations: Dict[str, float], gpus_per_node: int = 8,
         nodes: int = 1, gpu_mem_gib: float = 80, batch: int = 1,
         name: Optional[str] = None,
         allowance_gib: float = ALLOWANCE_GIB) -> MemoryPlan:
    world = gpus_per_node * nodes
    states = model_states(counts, strategy, precision, gpus_per_node, nodes)
    shares = [states[k] for k in ('params', 'grads', 'optimizer')]
    exact = sum(s.replicated for s in shares) + sum(
        s.sharded for s in shares) // world
    return MemoryPlan(
        strategy=name or strategy.kind, precision=precision.name,
        gpus_per_node=gpus_per_node, nodes=nodes, batch=batch,
        params=shares[0].per_rank(world), grads=shares[1].per_rank(world),
        optimizer=shares[2].per_rank(world), model_states=int(exact),
        activations=dict(activations), allowance=allowance_gib * GiB,
        cpu=states['cpu'], gpu_mem=gpu_mem_gib * GiB)


def largest_batch(fixed_bytes: float, activations_at: Callable[[int], float],
                  gpu_mem_bytes: float, limit: int = 1024) -> int:
    """The largest micro-batch whose activations fit next to
    ``fixed_bytes`` (model states + allowance); 0 if not even one."""
    best = 0
    for batch in range(1, limit + 1):
        if fixed_bytes + activations_at(batch) > gpu_mem_bytes:
            break
        best = batch
    return best
