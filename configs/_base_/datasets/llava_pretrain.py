# LLaVA-1.5 stage 1: the 558k LAION/CC/SBU captions (BLIP-captioned).
# Stage 1 always uses the `plain` template (<image> + caption), whatever the
# LLM; tokenizer, image processor and max_length come from the top level.
__data_root = '{{$DSVLM_DATA:data}}/LLaVA-Pretrain'

train_dataloader = dict(
    # per process; the schedule's global_batch_size sets the accumulation
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='llava_collate'),
    dataset=dict(
        type='LlavaDataset',
        ann_file=__data_root + '/blip_laion_cc_sbu_558k.json',
        image_folder=__data_root + '/images',
        image_aspect_ratio='original',  # LLaVA-1.5 pads only in stage 2
        template='plain',
        test_mode=False,
        # a sample that fails while training (a broken image...) is listed
        # in WORK_DIR/bad_samples.jsonl and replaced by the next usable one;
        # more than 1 % of the file skipped stops the run
        bad_samples=dict(policy='skip', max_fraction=0.01)),
)
val_dataloader = None
val_evaluator = None
