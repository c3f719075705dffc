"""Show DS-VLM's reconstructions and router weights while training."""
from typing import List

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from dsvlm.registry import HOOKS
from dsvlm.utils.image_grid import image_grid


def diffusion_supervisors(model) -> List:
    model = model.module if is_model_wrapper(model) else model
    return [s for s in getattr(model, 'supervisors', ())
            if hasattr(s, 'keep_last')]


@HOOKS.register_module()
class ReconVisualizationHook(Hook):
    """Every ``interval`` iterations, log to the visualizer's backends
    (TensorBoard in the default runtime):

    * ``recon_<i>``: original (left) and one-step reconstruction (right) of
      up to ``max_images`` images of the batch, for supervisor ``i``;
    * ``router/<layer>/P<j>``: the mean MoE router weight of branch ``j``
      (0 = text, then low/mid/high) in every cross-attention layer.

    The supervisor keeps its images only on those iterations.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 100, max_images: int = 4):
        self.interval = interval
        self.max_images = max_images

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        due = self.every_n_train_iters(runner, self.interval)
        for supervisor in diffusion_supervisors(runner.model):
            supervisor.keep_last = due

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        step = runner.iter + 1
        for index, supervisor in enumerate(
                diffusion_supervisors(runner.model)):
            if not supervisor.keep_last:
                continue
            supervisor.keep_last = False
            images, supervisor.last_images = supervisor.last_images, None
            if images is not None:
                rows = [[t, r] for t, r in zip(
                    images['target'][:self.max_images],
                    images['recon'][:self.max_images])]
                runner.visualizer.add_image(f'recon_{index}',
                                            image_grid(rows), step=step)
            scalars = {
                f'router/{layer}/P{j}': float(p)
                for layer, probs in supervisor.router_probabilities().items()
                for j, p in enumerate(probs)
            }
            if scalars:
                runner.visualizer.add_scalars(scalars, step=step)
