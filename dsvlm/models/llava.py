"""The LLaVA-1.5 VLM: vision encoder -> connector -> LLM, with optional
supervisors (DS-VLM) hanging off the side for training."""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel
from torch import nn

from dsvlm.registry import CONNECTORS, LLMS, MODELS, SUPERVISORS, VISION_ENCODERS
from .checkpoint import (ignore_expected_mismatches, keep_trainable,
                         load_pretrained_pth, trainable_names,
                         training_state_names)
from .features import VisualFeatures
from .generation import decode_answers, generation_kwargs
from .splice import splice_image_features
from .train_mode import check_train_mode, freeze
from .vision_encoders.hf_vision_encoder import default_feature_levels


@MODELS.register_module()
class LlavaModel(BaseModel):
    """LLaVA-style VLM assembled from the registries.

    Args:
        vision_encoder, connector, llm: configs for VISION_ENCODERS,
            CONNECTORS and LLMS.  The connector's ``in_dim``/``out_dim``
            default to the encoder and LLM widths.
        connector_train_mode: ``'full'`` or ``'frozen'``.
        tokenizer: tokenizer config or instance; needed by ``predict``.
        image_processor: the image processor config of the data pipeline;
            exports ship it with the weights, and supervisors learn the
            image normalisation from it (built on first use).
        template: conversation template (a name, or a dict of a name and
            fields to replace, see :func:`~dsvlm.datasets.get_template`);
            its end-of-turn string stops generation.
        max_length: the longest spliced sequence; the dataset truncates to
            it (a longer one is an error naming the sample).
        num_image_tokens: the image features per image the datasets count
            when they truncate; the first batch checks that the connector
            gives that many (None: not checked).
        pretrained_pth: a checkpoint file, or a finished run's work_dir, whose
            matching weights are loaded after building (stage 2 loads the
            stage-1 connector this way).
        supervisors: SUPERVISORS configs; each adds losses computed from the
            :class:`VisualFeatures` of the batch (training only).
        generation_cfg: ``generate`` arguments for ``predict``.
        save_trainable_only: checkpoints hold the trainable weights only.
    """

    def __init__(self,
                 vision_encoder: dict,
                 connector: dict,
                 llm: dict,
                 connector_train_mode: str = 'full',
                 tokenizer=None,
                 image_processor=None,
                 template=None,
                 max_length: Optional[int] = None,
                 num_image_tokens: Optional[int] = None,
                 pretrained_pth: Optional[str] = None,
                 supervisors: Optional[List[dict]] = None,
                 generation_cfg: Optional[dict] = None,
                 save_trainable_only: bool = True,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg=None):
        if data_preprocessor is None:
            data_preprocessor = dict(type='VLMDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.vision_encoder = VISION_ENCODERS.build(vision_encoder)
        self.llm = LLMS.build(llm)
        connector = dict(connector)
        connector.setdefault('in_dim', self.vision_encoder.hidden_size)
        connector.setdefault('out_dim', self.llm.hidden_size)
        self.connector = CONNECTORS.build(connector)
        if check_train_mode(connector_train_mode,
                            'connector_train_mode') == 'frozen':
            freeze(self.connector)
        elif connector_train_mode == 'lora':
            raise ValueError("connector_train_mode='lora' is not supported; "
                             "use 'full' or 'frozen'")
        self.supervisors = nn.ModuleList(
            SUPERVISORS.build(cfg, default_args=self._supervisor_args())
            for cfg in (supervisors or []))
        self._tokenizer_cfg = tokenizer
        self._tokenizer = None
        self.image_processor_cfg = image_processor
        self._image_normalization = None
        self.template = template
        self.max_length = max_length
        self.num_image_tokens = num_image_tokens
        self.generation_cfg = {'max_new_tokens': 32,
                               **(generation_cfg or {})}
        self.save_trainable_only = save_trainable_only
        self.register_load_state_dict_post_hook(ignore_expected_mismatches)
        if pretrained_pth:
            load_pretrained_pth(self, pretrained_pth)

    def _supervisor_args(self) -> dict:
        """What every supervisor is told about the features it reads."""
        num_layers = self.vision_encoder.num_layers
        levels = getattr(self.vision_encoder, 'feature_levels', None)
        return dict(encoder_dim=self.vision_encoder.hidden_size,
                    connector_dim=self.llm.hidden_size,
                    encoder_num_layers=num_layers,
                    encoder_levels=dict(
                        levels or default_feature_levels(num_layers)))

    @property
    def image_normalization(self):
        """``(mean, std)`` of the image processor of the data pipeline (the
        normalisation of ``pixel_values``), or None without one."""
        if self._image_normalization is None and \
                self.image_processor_cfg is not None:
            from dsvlm.datasets.image_processing import build_image_processor
            processor = build_image_processor(self.image_processor_cfg)
            self._image_normalization = (tuple(processor.image_mean),
                                         tuple(processor.image_std))
        return self._image_normalization

    # ------------------------------------------------------------ weights
    def init_weights(self):
        """Every part is initialised when built (HF modules by transformers,
        from their pretrained directories or their configs); MMEngine's
        recursive ``init_weights`` would re-initialise loaded HF weights."""

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if not self.save_trainable_only:
            return state
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        kept = trainable_names(self) | training_state_names(self)
        return keep_trainable(state, {prefix + n for n in kept})

    @property
    def tokenizer(self):
        if self._tokenizer is None and self._tokenizer_cfg is not None:
            from dsvlm.datasets.tokenizers import build_tokenizer
            self._tokenizer = build_tokenizer(self._tokenizer_cfg)
        return self._tokenizer

    # ------------------------------------------------------------ forward
    def forward(self, inputs: dict, data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._llm_forward(dict(inputs, labels=None),
                                     data_samples).logits
        raise ValueError(f"mode={mode!r}; use 'loss', 'predict' or 'tensor'")

    def encode_images(self, pixel_values, has_image=None) -> VisualFeatures:
        """Encoder and connector, with every intermediate kept for
        supervisors."""
        tokens, hidden_states = self.vision_encoder(pixel_values)
        mean, std = (self.image_normalization if len(self.supervisors) else
                     None) or (None, None)
        return VisualFeatures(pixel_values=pixel_values,
                              encoder_hidden_states=hidden_states,
                              encoder_tokens=tokens,
                              connector_output=self.connector(tokens),
                              has_image=has_image,
                              image_mean=mean, image_std=std)

    def _splice(self, inputs, data_samples, features, padding_side):
        sample_ids = [s.get('id') for s in data_samples] \
            if data_samples else None
        if features is not None:
            self._check_image_length(features.connector_output.shape[1])
        return splice_image_features(
            self.llm.embed_tokens, inputs['input_ids'],
            inputs['attention_mask'],
            features.connector_output if features is not None else None,
            inputs.get('has_image'), labels=inputs.get('labels'),
            max_length=self.max_length, padding_side=padding_side,
            sample_ids=sample_ids)

    def _check_image_length(self, num_features: int) -> None:
        expected = self.num_image_tokens
        if expected is not None and num_features != expected:
            raise ValueError(
                f'the connector gives {num_features} features per image, '
                f'but the config says num_image_tokens={expected} (what the '
                'datasets count when they truncate to max_length): set '
                f'num_image_tokens={num_features}')

    def _encode_if_images(self, inputs) -> VisualFeatures:
        """The batch's visual features; a batch without any image encodes
        one placeholder image (``has_image`` False) instead.

        Every rank must run the same modules on every step: sharded engines
        (DeepSpeed ZeRO-3, FSDP) gather each module's parameters in its
        forward, and a rank that skipped the encoder (or a supervisor) while
        another ran it would hang both.  The placeholder's features reach
        the loss with weight zero only.
        """
        pixel_values = inputs.get('pixel_values')
        if pixel_values is None:
            return self.encode_images(
                self._placeholder_images(inputs['input_ids'].device),
                torch.zeros(1, dtype=torch.bool,
                            device=inputs['input_ids'].device))
        return self.encode_images(pixel_values, inputs.get('has_image'))

    def _placeholder_images(self, device) -> torch.Tensor:
        size = getattr(self.vision_encoder, 'image_size', None)
        if size is None:
            raise AttributeError(
                f'{type(self.vision_encoder).__name__} has no `image_size`: '
                'a batch without images encodes a placeholder image of that '
                'size (every rank runs the encoder on every step)')
        return torch.zeros(1, 3, size, size, device=device)

    def _llm_forward(self, inputs, data_samples, features=None):
        if features is None:
            features = self._encode_if_images(inputs)
        spliced = self._splice(inputs, data_samples, features, 'right')
        out = self.llm(spliced.inputs_embeds, spliced.attention_mask,
                       labels=spliced.labels)
        if out.loss is not None:
            # Keep every trainable visual parameter in the graph when the
            # batch has text-only rows (or no image): DDP needs all grads.
            out.loss = out.loss + 0. * features.connector_output.sum()
        return out

    def loss(self, inputs: dict, data_samples=None) -> Dict[str, torch.Tensor]:
        features = self._encode_if_images(inputs)
        losses = dict(loss_lm=self._llm_forward(inputs, data_samples,
                                                features).loss)
        for supervisor in self.supervisors:
            # always called: a batch without images gets zero losses from
            # the same modules (see _encode_if_images)
            losses.update(supervisor.loss(features, data_samples))
        return losses

    @torch.no_grad()
    def predict(self, inputs: dict, data_samples=None) -> List[dict]:
        """Generate the answer of each sample; returns the data samples with
        ``pred_answer`` added."""
        if self.tokenizer is None:
            raise ValueError('LlavaModel.predict needs a tokenizer: set '
                             '`tokenizer` in the config')
        features = self._encode_if_images(inputs)
        spliced = self._splice(dict(inputs, labels=None), data_samples,
                               features, 'left')
        kwargs = generation_kwargs(self.tokenizer, self.template,
                                   self.generation_cfg)
        new_ids = self.llm.generate(spliced.inputs_embeds,
                                    spliced.attention_mask, **kwargs)
        answers = decode_answers(self.tokenizer, new_ids, self.template)
        samples = data_samples or [dict() for _ in answers]
        return [dict(sample, pred_answer=answer)
                for sample, answer in zip(samples, answers)]
