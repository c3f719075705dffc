"""Import a script of ``tools/`` as a module, to test its functions."""
import importlib.util
import os.path as osp

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name):
    """``tools/<name>.py`` as a module (named ``dsvlm_tool_<name>``)."""
    spec = importlib.util.spec_from_file_location(
        f'dsvlm_tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
