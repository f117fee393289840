"""Real MRI for 2D diffusion models: volumes in (MNI152 template or a NIfTI folder), cached slices out.

``build_slice_cache`` turns a source into normalised, resized, leakage-free train/val axial slices on
disk; ``SliceDataset`` reads one split back into memory. See ``sources`` and ``slices`` for the why.
SLIM-Diff's [image, lesion mask] slices: ``build_lesion_cache`` / ``LesionSliceDataset`` (``lesion_slices``), with
MNI152 + synthetic white-matter lesions (``lesions``) as the embedded, clearly labelled stand-in.
Siamese-Diffusion's 2D (image, mask) pairs from Kaggle folders (Kvasir-SEG, CVC-ClinicDB, ISIC 2018, PraNet,
prompt.json): ``find_pairs`` / ``build_pair_cache`` / ``PairDataset`` (``pairs``), ``mni152_pairs`` as the stand-in.
The kit's own pairs folders (generated pairs, evaluation sets), grey or RGB: ``load_pairs`` / ``save_pairs`` /
``check_pairs`` (``pairs_io``).
"""
from medkit.data.lesion_slices import LesionSliceDataset, balanced_indices, balanced_sampler, build_lesion_cache
from medkit.data.lesions import SyntheticLesionVolume, iter_synthetic_lesion_volumes, synthetic_lesion_volumes
from medkit.data.pairs import (PairDataset, PairFile, PairsReport, build_pair_cache, find_pairs, mni152_pairs,
                               validate_pairs)
from medkit.data.pairs_io import Pairs, PairsError, check_pairs, load_pairs, save_pairs
from medkit.data.slices import SliceDataset, build_slice_cache
from medkit.data.sources import DataError, Volume, fingerprint, mni152_volumes, nifti_folder_volumes

__all__ = ["DataError", "Volume", "mni152_volumes", "nifti_folder_volumes", "fingerprint",
           "build_slice_cache", "SliceDataset", "build_lesion_cache", "LesionSliceDataset", "balanced_indices",
           "balanced_sampler", "synthetic_lesion_volumes", "iter_synthetic_lesion_volumes", "SyntheticLesionVolume",
           "find_pairs", "validate_pairs", "build_pair_cache", "PairDataset", "mni152_pairs", "PairFile",
           "PairsReport", "PairsError", "Pairs", "check_pairs", "load_pairs", "save_pairs"]
