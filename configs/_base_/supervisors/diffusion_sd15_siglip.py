# DS-VLM's diffusion supervision for SigLIP-SO400M/14-384 (27 layers): the
# SD-1.5 supervisor of diffusion_sd15.py with SigLIP's features and
# normalisation.
#
# Layers (1-based): low 9, mid 18, high 26.
# * low/mid keep the paper's depths for CLIP-L: 8/24 and 16/24 of the
#   tower, i.e. 9/27 and 18/27 (exact thirds).
# * high is 26, not the proportional 27: 26 is the layer the connector reads
#   (select_layer=-2, as CLIP-L's 24 lies next to its read layer 23), so the
#   deepest supervised layer is one whose output reaches the LLM.  SigLIP's
#   27th layer only feeds its attention-pooling head, trained for the
#   contrastive objective; reconstruction gradient there would train a layer
#   that inference never uses.
# * SigLIP's processor normalises with mean = std = 0.5; the supervisor undoes
#   it to get the target image.
_base_ = ['./diffusion_sd15.py']

diffusion_supervisor = dict(
    image_layers=dict(low=9, mid=18, high=26),
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
)
