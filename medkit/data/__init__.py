"""Real MRI for 2D diffusion models: volumes in (MNI152 template or a NIfTI folder), cached slices out.

``build_slice_cache`` turns a source into normalised, resized, leakage-free train/val axial slices on
disk; ``SliceDataset`` reads one split back into memory. See ``sources`` and ``slices`` for the why.
"""
from medkit.data.slices import SliceDataset, build_slice_cache
from medkit.data.sources import DataError, Volume, fingerprint, mni152_volumes, nifti_folder_volumes

__all__ = ["DataError", "Volume", "mni152_volumes", "nifti_folder_volumes", "fingerprint",
           "build_slice_cache", "SliceDataset"]
