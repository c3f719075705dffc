# Mini-Gemini's instruction data (dvlab-research/MGM, 1.5M): the LLaVA mix plus
# ShareGPT4V, LAION-GPT4V, ALLaVA, DocVQA/ChartQA/DVQA/AI2D and generation
# prompts.  Same layout as MGM's `data/MGM-Finetune/mgm_instruction.json` with
# the image folder `data/MGM-Finetune`.  Only the low-resolution branch is
# used: the model is plain LLaVA-1.5.
_base_ = ['./llava_instruct.py']

__data_root = '{{$DSVLM_DATA:data}}/MGM-Finetune'

train_dataloader = dict(
    dataset=dict(ann_file=__data_root + '/mgm_instruction.json',
                 image_folder=__data_root))
