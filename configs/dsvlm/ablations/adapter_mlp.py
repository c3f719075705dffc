# Table 6, linear/MLP adapters, the default: = ts_is_all.py.
_base_ = ['./ts_is_all.py']
