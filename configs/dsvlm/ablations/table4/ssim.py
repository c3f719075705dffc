# Table 4, SSIM instead of the perceptual loss, stage 2.
_base_ = ['../../clip_vicuna7b.py']

model = dict(
    supervisors=[dict(_base_.diffusion_supervisor,
                      loss=dict(type='SSIMReconLoss'))],
    pretrained_pth='work_dirs/dsvlm/ablations/table4/ssim_pretrain')
