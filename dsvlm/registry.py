"""Registries of dsvlm.

MMEngine's registries get a ``dsvlm`` child each (``default_scope='dsvlm'``),
and the VLM component families get a registry of their own.  Every registry
imports its ``locations`` lazily, and an unknown ``type`` fails with an error
that names the registry and lists what is registered in it.

A user registers a new component from their own module::

    from dsvlm.registry import CONNECTORS

    @CONNECTORS.register_module()
    class MyConnector(nn.Module): ...

and loads it from a config with ``custom_imports=dict(imports=['my_module'])``.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry, build_from_cfg

SCOPE = 'dsvlm'


def _with_choices(build_func):
    """Wrap ``build_func`` so that an unknown ``type`` lists the valid ones.

    The type is looked up where MMEngine's build functions look it up: in the
    registry of the config's ``_scope_`` or of the default scope.  So the
    wrapper also serves MMEngine's root registries, through which the
    Runner builds (``dsvlm.engine.compat.patch_unknown_type_errors``).
    """

    def build(cfg, registry, *args, **kwargs):
        obj_type = cfg.get('type') if hasattr(cfg, 'get') else None
        if isinstance(obj_type, str):
            with registry.switch_scope_and_registry(
                    cfg.get('_scope_')) as target:
                found = target.get(obj_type) is not None
            if not found:
                names = sorted(_registered_names(target))
                raise KeyError(
                    f'{obj_type!r} is not in the {target.scope}::'
                    f'{target.name} registry. Registered names: '
                    f'{", ".join(names) or "(none)"}. A component from your '
                    'own module needs '
                    "`custom_imports=dict(imports=['your.module'])` in the "
                    'config.')
        return build_func(cfg, registry, *args, **kwargs)

    build.__wrapped__ = build_func
    build.lists_registered_names = True
    return build


def _registered_names(registry):
    registry.import_from_location()
    names, node = set(), registry
    while node is not None:  # a child also resolves names of its parents
        names.update(node.module_dict)
        node = node.parent
    return names


def _child(parent, name, locations):
    registry = Registry(name, parent=parent, scope=SCOPE, locations=locations)
    registry.build_func = _with_choices(registry.build_func)
    return registry


def _root(name, locations, build_func=build_from_cfg):
    return Registry(name, scope=SCOPE, locations=locations,
                    build_func=_with_choices(build_func))


# --- children of MMEngine's registries -------------------------------------
RUNNERS = _child(MMENGINE_RUNNERS, 'runner', ['dsvlm.engine'])
LOOPS = _child(MMENGINE_LOOPS, 'loop', ['dsvlm.engine'])
HOOKS = _child(MMENGINE_HOOKS, 'hook', ['dsvlm.engine.hooks'])
STRATEGIES = _child(MMENGINE_STRATEGIES, 'strategy', ['dsvlm.engine'])
MODELS = _child(MMENGINE_MODELS, 'model', ['dsvlm.models'])
MODEL_WRAPPERS = _child(MMENGINE_MODEL_WRAPPERS, 'model_wrapper',
                        ['dsvlm.engine'])
OPTIMIZERS = _child(MMENGINE_OPTIMIZERS, 'optimizer', ['dsvlm.engine'])
OPTIM_WRAPPERS = _child(MMENGINE_OPTIM_WRAPPERS, 'optim_wrapper',
                        ['dsvlm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = _child(MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                    'optimizer wrapper constructor',
                                    ['dsvlm.engine'])
PARAM_SCHEDULERS = _child(MMENGINE_PARAM_SCHEDULERS, 'parameter scheduler',
                          ['dsvlm.engine'])
DATASETS = _child(MMENGINE_DATASETS, 'dataset', ['dsvlm.datasets'])
DATA_SAMPLERS = _child(MMENGINE_DATA_SAMPLERS, 'data sampler',
                       ['dsvlm.datasets'])
TRANSFORMS = _child(MMENGINE_TRANSFORMS, 'transform', ['dsvlm.datasets'])
FUNCTIONS = _child(MMENGINE_FUNCTIONS, 'function', ['dsvlm.datasets'])
METRICS = _child(MMENGINE_METRICS, 'metric', ['dsvlm.evaluation'])
EVALUATOR = _child(MMENGINE_EVALUATOR, 'evaluator', ['dsvlm.evaluation'])
VISUALIZERS = _child(MMENGINE_VISUALIZERS, 'visualizer', ['dsvlm.engine'])
VISBACKENDS = _child(MMENGINE_VISBACKENDS, 'vis_backend', ['dsvlm.engine'])
LOG_PROCESSORS = _child(MMENGINE_LOG_PROCESSORS, 'log_processor',
                        ['dsvlm.engine'])

# --- the VLM component families --------------------------------------------
VISION_ENCODERS = _root('vision_encoder', ['dsvlm.models.vision_encoders'])
CONNECTORS = _root('connector', ['dsvlm.models.connectors'])
LLMS = _root('llm', ['dsvlm.models.llms'])
SUPERVISORS = _root('supervisor', ['dsvlm.models.supervisors'])
RECON_LOSSES = _root('recon_loss', ['dsvlm.models.recon_losses'])
