# LLaVA-1.5 stage 2: the 665k instruction mix (LLaVA, ShareGPT, VQAv2, GQA,
# OKVQA, OCR-VQA, A-OKVQA, TextCaps, RefCOCO, VG).  Images lie in coco/, gqa/,
# ocr_vqa/, textvqa/ and vg/ below the image folder.
__data_root = '{{$DSVLM_DATA:data}}/LLaVA-Instruct'

train_dataloader = dict(
    # per process; the schedule's global_batch_size sets the accumulation
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    # LLaVA's group_by_modality_length: batches are either all multimodal or
    # all text-only, and of similar length (its batch_size is the
    # dataloader's, filled in by dsvlm.engine.config.complete_config).
    sampler=dict(type='LengthGroupedSampler'),
    collate_fn=dict(type='llava_collate'),
    dataset=dict(
        type='LlavaDataset',
        ann_file=__data_root + '/llava_v1_5_mix665k.json',
        image_folder=__data_root,
        image_aspect_ratio='pad',
        test_mode=False,
        # a sample that fails while training (a broken image...) is listed
        # in WORK_DIR/bad_samples.jsonl and replaced by the next usable one;
        # more than 1 % of the file skipped stops the run
        bad_samples=dict(policy='skip', max_fraction=0.01)),
)
val_dataloader = None
val_evaluator = None
