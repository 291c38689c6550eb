"""Evaluation metrics as pure functions on uint8 image arrays [N, H, W, 3].

image_quality: PSNR / SSIM (dm-pix). task_id: task-identification accuracy. fid: Frechet
distance and the set-distance interface. cycle: the paper's prompt / image fidelity.
"""
