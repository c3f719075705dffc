# Plain data parallel: MMEngine's Runner wraps the model in
# DistributedDataParallel.  Every rank holds the whole model, its gradients
# and the optimizer state (16 bytes per trainable parameter with bf16
# autocast over fp32 master weights): for stage 1 and small models.
runner_type = 'Runner'
strategy = None
