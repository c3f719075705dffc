# Table 5, ICA: MoE / independent cross-attention, the default: = ts_is_all.py.
_base_ = ['./ts_is_all.py']
