"""Our unsupervised step against transformers' own
``LlavaForConditionalGeneration`` on the same weights and batch (forward +
backward), so that the platform's baseline is known not to be slower than
the reference implementation.

The reference is the model exported in memory (:func:`to_hf_llava`); its
batch is ours with each image token expanded into the image's feature
positions, as transformers' processor writes it.  Both compute the same
loss (mean cross-entropy over the supervised tokens): :func:`compare_with_hf`
reports both, so a timing is only read next to equal losses.
"""
import statistics
from typing import Dict

import torch

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.export.hf_llava import to_hf_llava
from .step_timing import _TimeMeter, without_supervisors


def hf_inputs(inputs: dict, image_token_id: int,
              num_image_tokens: int) -> dict:
    """transformers' LLaVA inputs for our preprocessed ``inputs``: each
    image token becomes ``num_image_tokens`` ``image_token_id`` positions
    (labels ignored there), rows right-padded."""
    rows = []
    for ids, mask, labels in zip(inputs['input_ids'],
                                 inputs['attention_mask'],
                                 inputs['labels']):
        ids, labels = ids[mask], labels[mask]
        out_ids, out_labels = [], []
        for token, label in zip(ids.tolist(), labels.tolist()):
            if token == IMAGE_TOKEN_INDEX:
                out_ids += [image_token_id] * num_image_tokens
                out_labels += [IGNORE_INDEX] * num_image_tokens
            else:
                out_ids.append(token)
                out_labels.append(label)
        rows.append((out_ids, out_labels))
    length = max(len(ids) for ids, _ in rows)
    device = inputs['input_ids'].device
    input_ids = torch.zeros(len(rows), length, dtype=torch.long,
                            device=device)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids, device=device)
        labels[row, :len(ids)] = torch.tensor(row_labels, device=device)
        attention_mask[row, :len(ids)] = True
    batch = dict(input_ids=input_ids, attention_mask=attention_mask,
                 labels=labels)
    has_image = inputs.get('has_image')
    if inputs.get('pixel_values') is not None and has_image.any():
        batch['pixel_values'] = inputs['pixel_values'][has_image]
    return batch


def _unused_token_id(inputs: dict, vocab_size: int) -> int:
    """The largest id the batch does not use: the image token of the
    reference, inside the vocabulary (a new row would add a logit to every
    softmax and change the loss)."""
    used = set(inputs['input_ids'].flatten().tolist())
    for token_id in range(vocab_size - 1, -1, -1):
        if token_id not in used:
            return token_id
    return vocab_size


def compare_with_hf(model, batch: dict, steps: int, device) -> Dict:
    """Median forward + backward seconds of our step without supervisors
    and of transformers' LLaVA on ``batch`` (a dataloader batch),
    alternating ``steps`` times after one unmeasured round each, with both
    losses of the first round."""
    model.train()
    data = model.data_preprocessor(batch, training=True)
    inputs, samples = data['inputs'], data['data_samples']
    image_token_id = _unused_token_id(
        inputs, model.llm.model.get_input_embeddings().weight.shape[0])
    hf = to_hf_llava(model, image_token_id).to(device).train()
    # the image's positions in transformers' input: the export's count
    reference = hf_inputs(inputs, image_token_id, hf.config.image_seq_length)
    times = dict(ours=[], transformers=[])
    losses = {}
    for k in range(steps + 1):
        with without_supervisors(model), _TimeMeter(device) as ours:
            loss = model.loss(inputs, samples)['loss_lm']
            loss.backward()
        with _TimeMeter(device) as theirs:
            hf_loss = hf(**reference).loss
            hf_loss.backward()
        model.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
        if k == 0:
            losses = dict(ours=float(loss), transformers=float(hf_loss))
        else:
            times['ours'].append(ours.value)
            times['transformers'].append(theirs.value)
    ours_s = statistics.median(times['ours'])
    theirs_s = statistics.median(times['transformers'])
    return dict(ours_s=ours_s, transformers_s=theirs_s,
                ratio=ours_s / theirs_s, loss_ours=losses['ours'],
                loss_transformers=losses['transformers'])
