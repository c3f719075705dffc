# Table 9, trainable encoder (+ adapters), the default: = ts_is_all.py.
_base_ = ['./ts_is_all.py']
