# Mini-Gemini's stage-1 data (dvlab-research/MGM, 1.2M captions): LLaVA's
# 558k plus ALLaVA's GPT-4V captions.  Same layout as MGM's
# `data/MGM-Pretrain/mgm_pretrain.json` with the image folder
# `data/MGM-Pretrain`; the `plain` template, as LLaVA's stage 1.
_base_ = ['./llava_pretrain.py']

__data_root = '{{$DSVLM_DATA:data}}/MGM-Pretrain'

train_dataloader = dict(
    dataset=dict(ann_file=__data_root + '/mgm_pretrain.json',
                 image_folder=__data_root))
