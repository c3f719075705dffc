# Table 4, PL: the perceptual (LPIPS-VGG) loss, the default: = ts_is_all.py.
_base_ = ['./ts_is_all.py']
