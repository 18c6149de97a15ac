"""Dataset layouts (BraTS 2021/2023, MSD, nnU-Net), case index, labels, synthetic cohort."""
