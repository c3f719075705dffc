# Table 3, TS + IS-all: the default DS-VLM supervisor (connector output +
# encoder layers 8/16/24).  It is also the default row of Tables 4 (PL),
# 5 (ICA), 6 (MLP adapter) and 9 (trainable encoder), and the base of every
# other ablation, which changes one thing.  See README.md.
_base_ = ['../clip_vicuna7b.py']

model = dict(
    # every row starts from the LLaVA-1.5 stage-1 run (configs/llava/
    # clip_vicuna7b_pretrain.py), so rows differ in stage 2 only
    pretrained_pth='work_dirs/clip_vicuna7b_pretrain')
work_dir = None  # tools/train.py's default: work_dirs/<ablation name>
