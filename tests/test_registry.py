"""Registries: decorator registration in a user's module, custom_imports,
scoped building, and the error for an unknown type."""
import uuid

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope

import dsvlm.engine  # noqa: F401  (applies the compat patches)
from dsvlm.registry import CONNECTORS, MODELS


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh module of the user's, registering a connector and a model."""
    tag = uuid.uuid4().hex[:8]
    name = f'user_components_{tag}'
    (tmp_path / f'{name}.py').write_text(f'''
from torch import nn
from mmengine.model import BaseModel
from dsvlm.registry import CONNECTORS, MODELS


@CONNECTORS.register_module()
class UserConnector{tag}(nn.Linear):
    pass


@MODELS.register_module()
class UserModel{tag}(BaseModel):
    def __init__(self, connector):
        super().__init__()
        self.connector = CONNECTORS.build(connector)

    def forward(self, *args, **kwargs):
        return self.connector(*args)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / 'cfg.py'
    config.write_text(f'''
custom_imports = dict(imports=['{name}'], allow_failed_imports=False)
default_scope = 'dsvlm'
model = dict(type='UserModel{tag}',
             connector=dict(type='UserConnector{tag}', in_features=3,
                            out_features=5))
''')
    return tag, str(config)


def test_custom_imports_registers_user_components(user_module):
    tag, config = user_module
    assert CONNECTORS.get(f'UserConnector{tag}') is None  # not imported yet
    cfg = Config.fromfile(config)  # imports the module via custom_imports
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == f'UserModel{tag}'
    assert type(model.connector).__name__ == f'UserConnector{tag}'
    assert model.connector.weight.shape == (5, 3)
    # the Runner builds through MMEngine's root registry + default scope
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        again = MMENGINE_MODELS.build(cfg.model)
    assert type(again).__name__ == f'UserModel{tag}'


def test_unknown_type_names_the_registry_and_lists_names(user_module):
    tag, config = user_module
    Config.fromfile(config)
    with pytest.raises(KeyError) as error:
        CONNECTORS.build(dict(type='NoSuchConnector'))
    message = str(error.value)
    assert "'NoSuchConnector' is not in the dsvlm::connector registry" \
        in message
    assert f'UserConnector{tag}' in message
    assert 'custom_imports' in message


def test_unknown_nested_type_reports_the_inner_registry(user_module):
    tag, config = user_module
    cfg = Config.fromfile(config)
    cfg.model.connector.type = 'NoSuchConnector'
    with DefaultScope.overwrite_default_scope('dsvlm'):
        with pytest.raises(KeyError) as error:
            MMENGINE_MODELS.build(cfg.model)
    message = str(error.value)
    assert 'dsvlm::connector registry' in message
    assert f'UserConnector{tag}' in message
    assert f'UserModel{tag}' not in message  # not the model registry's list
