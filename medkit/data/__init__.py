"""Real MRI for 2D diffusion models: volumes in (MNI152 template or a NIfTI folder), cached slices out.

``build_slice_cache`` turns a source into normalised, resized, leakage-free train/val axial slices on
disk; ``SliceDataset`` reads one split back into memory. See ``sources`` and ``slices`` for the why.
SLIM-Diff's [image, lesion mask] slices: ``build_lesion_cache`` / ``LesionSliceDataset`` (``lesion_slices``), with
MNI152 + synthetic white-matter lesions (``lesions``) as the embedded, clearly labelled stand-in.
"""
from medkit.data.lesion_slices import LesionSliceDataset, balanced_indices, balanced_sampler, build_lesion_cache
from medkit.data.lesions import SyntheticLesionVolume, iter_synthetic_lesion_volumes, synthetic_lesion_volumes
from medkit.data.slices import SliceDataset, build_slice_cache
from medkit.data.sources import DataError, Volume, fingerprint, mni152_volumes, nifti_folder_volumes

__all__ = ["DataError", "Volume", "mni152_volumes", "nifti_folder_volumes", "fingerprint",
           "build_slice_cache", "SliceDataset", "build_lesion_cache", "LesionSliceDataset", "balanced_indices",
           "balanced_sampler", "synthetic_lesion_volumes", "iter_synthetic_lesion_volumes", "SyntheticLesionVolume"]
