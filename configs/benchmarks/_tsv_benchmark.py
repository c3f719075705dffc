# What every benchmark shares: a TSV in VLMEvalKit's format (the files
# VLMEvalKit downloads to ~/LMUData; set DSVLM_DATA or data_file), predicted
# greedily in the training template, batch 8 per process, scored by rule.
#   python tools/test.py CONFIG CHECKPOINT --benchmark mmbench_dev_en
# merges a benchmark config into the model's config; tokenizer, image
# processor and template come from the model's config.
lmu_data = '{{$DSVLM_DATA:data}}/LMUData'

test_dataloader = dict(
    batch_size=8,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='llava_collate'),
    dataset=dict(type='VLMEvalTSVDataset', image_aspect_ratio='pad'))
test_cfg = dict(type='TestLoop')
# {work_dir} is the test run's work_dir, {benchmark} the TSV's name: the
# per-sample predictions that VLMEvalKit's scorers read
prediction_file = '{work_dir}/predictions/{benchmark}.tsv'
