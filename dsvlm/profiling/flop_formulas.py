"""FLOP formulas that ``torch.utils.flop_counter`` lacks, registered on
import: CPU's fused attention kernel (``scaled_dot_product_attention`` on
CPU tensors), counted as the CUDA kernels are (both products of the score
matrix, not halved for causal masks).  Without them a step measured on CPU
leaves attention out of its FLOPs."""
from torch.utils import flop_counter

_aten = flop_counter.aten


@flop_counter.register_flop_formula(
    _aten._scaled_dot_product_flash_attention_for_cpu)
def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args,
                  out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


@flop_counter.register_flop_formula(
    _aten._scaled_dot_product_flash_attention_for_cpu_backward)
def cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape,
                           value_shape, *args, out_shape=None,
                           **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(
        grad_out_shape, query_shape, key_shape, value_shape)
