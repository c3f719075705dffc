"""Install dsvlm: `bash tools/install.sh` (see README), or
`pip install -c requirements/constraints.txt -e .[tests]` with torch present.
"""
import os.path as osp

from setuptools import find_namespace_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt, comments dropped."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def read_version():
    scope = {}
    with open(osp.join(HERE, 'dsvlm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='dsvlm',
    version=read_version(),
    description='LLaVA-style VLM training on MMEngine with diffusion '
    'supervision of the vision encoder (DS-VLM)',
    packages=find_namespace_packages(include=['dsvlm', 'dsvlm.*'],
                                     exclude=['*.__pycache__']),
    python_requires='>=3.10',
    install_requires=read_requirements('runtime'),
    extras_require=dict(
        tests=read_requirements('tests'),
        deepspeed=read_requirements('deepspeed'),
    ),
    zip_safe=False,
)
