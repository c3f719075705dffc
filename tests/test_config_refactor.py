"""Issue 8 made DS-VLM a stage (``_base_/schedules/dsvlm_*.py``) and moved
what DS-VLM leaves used to restate into one place each.  Every config that
existed before resolves as it did (tests/data/configs_before_issue8.json,
written by tests/config_snapshot.py from the tree before the change),
except for the changes listed here, each made on purpose:

* ``work_dir`` defaults to ``work_dirs/<path under configs/>``, so every
  config resolves with one, and LLaVA's stage 2 reads its stage 1 there;
* the supervisor reads the encoder's low/mid/high levels by name (the
  layers live in ``vision_encoder.feature_levels``: SigLIP's 9/18/26 there)
  and takes the image normalisation from the model's image processor;
* the LLaVA Mini-Gemini run has its own Mini-Gemini stage 1.

Later issues add theirs at the end of ``intended_changes`` (issue 10: the
checkpoint hook is ``SafeCheckpointHook``).
"""
import json
import os.path as osp

import pytest

from config_snapshot import leaf_configs, resolve

SNAPSHOT = osp.join(osp.dirname(__file__), 'data',
                    'configs_before_issue8.json')
MISSING = '<missing>'
LEVELS = ('low', 'mid', 'high')

with open(SNAPSHOT) as f:
    BEFORE = json.load(f)


def intended_changes(name, before):
    """``{key: new value or MISSING}`` that issue 8 makes to ``name``."""
    changes = {}
    if 'work_dir' not in before:
        changes['work_dir'] = f'work_dirs/{name}'
    pth = before.get('model.pretrained_pth')
    if name.startswith('llava/') and pth:
        changes['model.pretrained_pth'] = pth.replace(
            'work_dirs/', 'work_dirs/llava/')
    if name == 'llava/clip_vicuna7b_mgm':
        changes['model.pretrained_pth'] = \
            'work_dirs/llava/clip_vicuna7b_mgm_pretrain'
    if name.startswith(('llava/siglip', 'dsvlm/siglip')):
        for encoder in ('vision_encoder.', 'model.vision_encoder.'):
            changes.update({f'{encoder}feature_levels.{level}': layer
                            for level, layer in zip(LEVELS, (9, 18, 26))})
    if name.startswith('dsvlm/'):
        for sup in ('diffusion_supervisor.', 'model.supervisors.0.'):
            changes.update({f'{sup}image_layers.{level}': MISSING
                            for level in LEVELS})
            changes[f'{sup}image_layers'] = list(LEVELS)
            if name.startswith('dsvlm/siglip'):
                changes.update({f'{sup}image_mean': MISSING,
                                f'{sup}image_std': MISSING})
    # issue 10: crash-safe checkpoints
    if before.get('default_hooks.checkpoint.type') == 'CheckpointHook':
        changes['default_hooks.checkpoint.type'] = 'SafeCheckpointHook'
    # issue 10: optimizer wrappers that never apply a non-finite step
    wrapper = before.get('optim_wrapper.type', MISSING)
    if wrapper in ('OptimWrapper', 'AmpOptimWrapper', 'DeepSpeedOptimWrapper'):
        changes['optim_wrapper.type'] = 'FiniteStep' + wrapper
    # issue 10: the datasets count the image as its features when they
    # truncate: (image_size // patch_size)^2 patch features (no CLS)
    size = before.get('model.vision_encoder.config.image_size')
    patch = before.get('model.vision_encoder.config.patch_size')
    tokens = (size // patch) ** 2
    changes['num_image_tokens'] = changes['model.num_image_tokens'] = tokens
    for key in before:
        if key.endswith('dataset.max_length'):
            changes[key.replace('max_length', 'num_image_tokens')] = tokens
    # issue 10: training samples that fail are recorded and replaced
    if before.get('train_dataloader.dataset.type') == 'LlavaDataset':
        prefix = 'train_dataloader.dataset.bad_samples.'
        work_dir = changes.get('work_dir', before.get('work_dir'))
        changes.update({prefix + 'policy': 'skip',
                        prefix + 'max_fraction': 0.01,
                        prefix + 'record_file':
                        f'{work_dir}/bad_samples.jsonl'})
    return changes


def test_snapshot_covers_every_config_that_existed():
    assert set(BEFORE) <= set(leaf_configs())
    assert len(BEFORE) == 25


@pytest.mark.parametrize('name', sorted(BEFORE))
def test_config_resolves_as_before_but_for_the_intended_changes(name):
    before, after = BEFORE[name], resolve(name)
    after = json.loads(json.dumps(after))  # tuples as lists, as stored
    changed = {k: after.get(k, MISSING) for k in set(before) | set(after)
               if before.get(k, MISSING) != after.get(k, MISSING)}
    assert changed == intended_changes(name, before)
