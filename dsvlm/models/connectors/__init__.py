from .mlp import LinearConnector, MLPConnector

__all__ = ['MLPConnector', 'LinearConnector']
