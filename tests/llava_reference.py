"""The official LLaVA-1.5 prompt code, as an independent test reference.

The reference is the code of the PyPI package ``llava-torch==1.2.2.post1``
(haotian-liu/LLaVA), installed without dependencies by tools/install.sh (its
pinned torch/transformers would replace ours). dsvlm never imports it.

Importing ``llava`` runs ``llava/__init__.py``, which imports the model zoo
(and with it old transformers APIs), so nothing here imports the package:

* ``llava/constants.py``, ``llava/conversation.py`` and ``llava/mm_utils.py``
  are loaded by file path, with a stub ``llava`` package module (``__path__``
  only, no code run) and ``llava.constants`` in ``sys.modules`` while they
  load (mm_utils does ``from llava.constants import IMAGE_TOKEN_INDEX``);
  ``sys.modules`` is restored afterwards;
* ``preprocess_multimodal``, ``preprocess_v1`` and ``preprocess_plain`` (and
  the ``IS_TOKENIZER_GREATER_THAN_0_14`` assignment) are taken from the AST
  of ``llava/train/train.py`` and executed in a namespace that provides the
  names they use. train.py itself is never imported.

API::

    ref = llava_reference()          # cached; raises LlavaReferenceMissing
    ref.conv_vicuna_v1, ref.conv_llava_plain, ref.conv_templates
    ref.tokenizer_image_token(prompt, tokenizer)
    ref.preprocess_multimodal(conversations) -> new conversations
    ref.preprocess_v1(sources, tokenizer, has_image)   # official, unchanged
    ref.preprocess_plain(sources, tokenizer)           # official, unchanged
    ref.IGNORE_INDEX, ref.IMAGE_TOKEN_INDEX, ref.DEFAULT_IMAGE_TOKEN

    reference_vicuna_prompt(conversations)             -> prompt
    reference_vicuna_ids(conversations, tokenizer)     -> (prompt, ids)
    reference_vicuna_sample(conversations, tokenizer)  -> dict with labels
    reference_plain_ids(conversations, tokenizer)      -> (prompt, ids)
    reference_plain_sample(conversations, tokenizer)   -> dict with labels

``conversations`` is a LLaVA record's list of ``{'from': 'human'|'gpt',
'value': str}``; the inputs are never modified.
"""
import ast
import contextlib
import copy
import functools
import importlib.metadata
import importlib.util
import io
import sys
import types
import typing
from pathlib import Path

DISTRIBUTION = 'llava-torch'
VERSION = '1.2.2.post1'
INSTALL_HINT = (f'pip install --no-deps {DISTRIBUTION}=={VERSION} '
                '(tools/install.sh does it)')
_TRAIN_FUNCTIONS = ('preprocess_multimodal', 'preprocess_v1',
                    'preprocess_plain')


class LlavaReferenceMissing(ImportError):
    """llava-torch is not installed."""


def llava_source_dir():
    """The installed ``llava`` package directory (nothing is imported)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise LlavaReferenceMissing(
            f'{DISTRIBUTION} is not installed: {INSTALL_HINT}') from e
    for f in dist.files or ():
        if f.as_posix() == 'llava/constants.py':
            return Path(dist.locate_file(f)).resolve().parent
    raise LlavaReferenceMissing(
        f'{DISTRIBUTION} {dist.version} has no llava/constants.py')


def _exec_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _restored_sys_modules(names):
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    try:
        yield
    finally:
        for n in names:
            if n in saved:
                sys.modules[n] = saved[n]
            else:
                sys.modules.pop(n, None)


class _ConversationLib(types.ModuleType):
    """``llava.conversation`` with its own ``default_conversation``.

    LLaVA's train() assigns ``conversation_lib.default_conversation`` (v1 for
    instruction tuning, plain for pretraining); each set of official
    functions gets a view with the right default, so the shared module is
    never mutated.
    """

    def __init__(self, module, default_conversation):
        super().__init__(module.__name__)
        self.__dict__.update(module.__dict__)
        self.default_conversation = default_conversation


class _DataArguments:
    """The fields of LLaVA's DataArguments that preprocess_multimodal reads
    (LLaVA-1.5: multimodal, no <im_start>/<im_end>)."""
    is_multimodal = True
    mm_use_im_start_end = False
    image_aspect_ratio = 'pad'


def _train_functions(train_py, constants, conversation, mm_utils,
                     default_conversation):
    """The official functions of train.py, run in their own namespace."""
    import tokenizers
    import torch
    import transformers
    from packaging import version

    source = Path(train_py).read_text(encoding='utf-8')
    tree = ast.parse(source, filename=str(train_py))
    wanted = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in _TRAIN_FUNCTIONS:
            wanted.append(node)
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and getattr(node.targets[0], 'id', None)
              == 'IS_TOKENIZER_GREATER_THAN_0_14'):
            wanted.append(node)
    found = {getattr(n, 'name', 'IS_TOKENIZER_GREATER_THAN_0_14')
             for n in wanted}
    missing = set(_TRAIN_FUNCTIONS) | {'IS_TOKENIZER_GREATER_THAN_0_14'}
    missing -= found
    if missing:
        raise LlavaReferenceMissing(
            f'{train_py} has no {sorted(missing)}')
    namespace = {
        '__name__': 'llava_reference_train',
        'copy': copy, 'torch': torch, 'transformers': transformers,
        'tokenizers': tokenizers, 'version': version,
        'Dict': typing.Dict, 'Optional': typing.Optional,
        'Sequence': typing.Sequence, 'List': typing.List,
        'DataArguments': _DataArguments,
        'conversation_lib': _ConversationLib(conversation,
                                             default_conversation),
        'tokenizer_image_token': mm_utils.tokenizer_image_token,
    }
    namespace.update({k: v for k, v in vars(constants).items()
                      if not k.startswith('_')})
    code = compile(ast.Module(body=wanted, type_ignores=[]), str(train_py),
                   'exec')
    exec(code, namespace)
    return namespace


@functools.lru_cache(maxsize=None)
def llava_reference():
    """The official LLaVA prompt code (see the module docstring)."""
    root = llava_source_dir()
    names = ['llava', 'llava.constants', 'llava.conversation',
             'llava.mm_utils']
    with _restored_sys_modules(names):
        package = types.ModuleType('llava')
        package.__path__ = [str(root)]
        package.__file__ = None
        sys.modules['llava'] = package
        constants = _exec_file('llava.constants', root / 'constants.py')
        conversation = _exec_file('llava.conversation',
                                  root / 'conversation.py')
        mm_utils = _exec_file('llava.mm_utils', root / 'mm_utils.py')
    train_py = root / 'train' / 'train.py'
    v1 = _train_functions(train_py, constants, conversation, mm_utils,
                          conversation.conv_vicuna_v1)
    plain = _train_functions(train_py, constants, conversation, mm_utils,
                             conversation.conv_llava_plain)
    data_args = _DataArguments()

    def preprocess_multimodal(conversations):
        """Official preprocess_multimodal on one record (a deep copy): the
        <image> tag is moved to the front of its message, followed by
        '\\n'."""
        sources = v1['preprocess_multimodal'](
            [copy.deepcopy(list(conversations))], data_args)
        return sources[0]

    return types.SimpleNamespace(
        source_dir=root,
        version=importlib.metadata.version(DISTRIBUTION),
        constants=constants,
        conversation=conversation,
        mm_utils=mm_utils,
        conv_vicuna_v1=conversation.conv_vicuna_v1,
        conv_llava_plain=conversation.conv_llava_plain,
        conv_templates=conversation.conv_templates,
        SeparatorStyle=conversation.SeparatorStyle,
        tokenizer_image_token=mm_utils.tokenizer_image_token,
        preprocess_multimodal=preprocess_multimodal,
        preprocess_v1=v1['preprocess_v1'],
        preprocess_plain=plain['preprocess_plain'],
        IS_TOKENIZER_GREATER_THAN_0_14=v1['IS_TOKENIZER_GREATER_THAN_0_14'],
        IGNORE_INDEX=constants.IGNORE_INDEX,
        IMAGE_TOKEN_INDEX=constants.IMAGE_TOKEN_INDEX,
        DEFAULT_IMAGE_TOKEN=constants.DEFAULT_IMAGE_TOKEN,
    )


def llava_reference_or_skip():
    """llava_reference(), or skip the calling test when llava-torch is not
    installed (CI installs it through tools/install.sh)."""
    import pytest
    try:
        return llava_reference()
    except LlavaReferenceMissing as e:
        pytest.skip(f'official LLaVA reference unavailable: {e}')


def _has_image(conversations):
    return any('<image>' in m['value'] for m in conversations)


def reference_vicuna_prompt(conversations, has_image=None):
    """The vicuna_v1 prompt as LLaVA's preprocess_v1 builds it (after
    preprocess_multimodal for image samples; a leading gpt turn is
    dropped)."""
    ref = llava_reference()
    if has_image is None:
        has_image = _has_image(conversations)
    source = (ref.preprocess_multimodal(conversations) if has_image
              else copy.deepcopy(list(conversations)))
    conv = ref.conv_vicuna_v1.copy()
    roles = {'human': conv.roles[0], 'gpt': conv.roles[1]}
    if roles[source[0]['from']] != conv.roles[0]:
        source = source[1:]
    conv.messages = []
    for j, sentence in enumerate(source):
        role = roles[sentence['from']]
        assert role == conv.roles[j % 2], 'roles must alternate'
        conv.append_message(role, sentence['value'])
    return conv.get_prompt()


def reference_vicuna_ids(conversations, tokenizer, has_image=None):
    """(prompt, input_ids) of the official vicuna_v1 pipeline:
    ``tokenizer_image_token(prompt, tokenizer)`` for image samples (-200
    where <image> is), ``tokenizer(prompt).input_ids`` for text-only ones."""
    ref = llava_reference()
    if has_image is None:
        has_image = _has_image(conversations)
    prompt = reference_vicuna_prompt(conversations, has_image)
    if has_image:
        ids = ref.tokenizer_image_token(prompt, tokenizer)
    else:
        ids = tokenizer(prompt).input_ids
    return prompt, list(ids)


def _llava_tokenizer(tokenizer, model_max_length):
    # LLaVA's train(): pad_token = unk_token for every template but v0, and
    # model_max_length from the training arguments. On a copy: the caller's
    # tokenizer is left alone.
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def _run_official(fn, *args, **kwargs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = fn(*args, **kwargs)
    return result, out.getvalue()


def reference_vicuna_sample(conversations, tokenizer, has_image=None,
                            model_max_length=2048):
    """The official ``preprocess_v1`` on one record.

    Returns dict(prompt, input_ids, labels, warning): ``labels`` are LLaVA's
    (IGNORE_INDEX on the system prompt and the user turns); ``warning`` is
    what preprocess_v1 printed (its "tokenization mismatch" message, after
    which it masks the whole sample), '' if nothing.
    """
    ref = llava_reference()
    if has_image is None:
        has_image = _has_image(conversations)
    source = (ref.preprocess_multimodal(conversations) if has_image
              else copy.deepcopy(list(conversations)))
    tok = _llava_tokenizer(tokenizer, model_max_length)
    result, printed = _run_official(ref.preprocess_v1, [source], tok,
                                    has_image=has_image)
    return dict(prompt=reference_vicuna_prompt(conversations, has_image),
                input_ids=result['input_ids'][0].tolist(),
                labels=result['labels'][0].tolist(),
                warning=printed.strip())


def reference_plain_ids(conversations, tokenizer):
    """(prompt, input_ids) as LLaVA's pretraining (plain template) builds
    them: preprocess_multimodal, then preprocess_plain's
    ``'<image>' + answer + '\\n'`` through tokenizer_image_token."""
    sample = reference_plain_sample(conversations, tokenizer)
    return sample['prompt'], sample['input_ids']


def reference_plain_sample(conversations, tokenizer):
    """The official ``preprocess_plain`` on one record: dict(prompt,
    input_ids, labels); labels mask the image part."""
    ref = llava_reference()
    source = ref.preprocess_multimodal(conversations)
    result = ref.preprocess_plain([source], tokenizer)
    prompt = (ref.DEFAULT_IMAGE_TOKEN + source[1]['value']
              + ref.conv_llava_plain.sep)
    return dict(prompt=prompt, input_ids=result['input_ids'][0].tolist(),
                labels=result['labels'][0].tolist())
