"""Record the reference outputs that tests/test_perceptual.py checks medkit's LPIPS and FID Inception against.

Run in a virtualenv that has torch, torchvision, lpips, torch-fidelity and torchmetrics (not the project's
environment, which must stay free of torchvision), from the repository root:

    python scripts/reference/record_perceptual_references.py

It needs no downloads: the reference networks (``lpips.LPIPS`` with ``pnet_rand=True``, torch-fidelity's
``FeatureExtractorInceptionV3`` and torchmetrics' ``FrechetInceptionDistance`` built with the download
skipped) are filled with the seeded weights of medkit/metrics/_testing.py, the module the test uses too.
Only the LPIPS linear heads are the real v0.1 ones, read from the lpips package after checking that they
are byte-identical to torchmetrics' copies. Writes tests/fixtures/perceptual_reference.json (versions,
hashes, layouts, LPIPS distances) and tests/fixtures/perceptual_reference.npz (Inception features).
About 20 s (one CPU thread, as the test uses).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import lpips
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
import torchmetrics
import torchvision
from torchmetrics.image.fid import FrechetInceptionDistance

ROOT = Path(__file__).resolve().parents[2]
OUT_JSON = ROOT / "tests" / "fixtures" / "perceptual_reference.json"
OUT_NPZ = ROOT / "tests" / "fixtures" / "perceptual_reference.npz"

# medkit/metrics/_testing.py by path: importing the medkit package is not needed on the reference side.
_spec = importlib.util.spec_from_file_location("medkit_perceptual_testing", ROOT / "medkit" / "metrics" / "_testing.py")
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)


def layout(sd: dict) -> list:
    return [[k, list(v.shape)] for k, v in sd.items()]


@contextmanager
def inception_without_download():
    """Build torch-fidelity's InceptionV3 with its weight download and load skipped (weights loaded after)."""
    cls = tf_inception.FeatureExtractorInceptionV3
    saved_url, saved_load = tf_inception.load_state_dict_from_url, cls.load_state_dict
    tf_inception.load_state_dict_from_url = lambda *a, **k: {}
    cls.load_state_dict = lambda self, *a, **k: None
    try:
        yield
    finally:
        tf_inception.load_state_dict_from_url, cls.load_state_dict = saved_url, saved_load


def record_lpips(out: dict) -> None:
    tm_dir = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models"
    lp_dir = Path(lpips.__file__).parent / "weights" / "v0.1"
    (a, b), (ga, gb) = T.lpips_inputs()
    out["lpips_inputs_fingerprint"] = T.fingerprint([a, b, ga, gb])
    for net, tv_features in (("alex", torchvision.models.alexnet), ("vgg", torchvision.models.vgg16)):
        tm_bytes, lp_bytes = (tm_dir / f"{net}.pth").read_bytes(), (lp_dir / f"{net}.pth").read_bytes()
        assert tm_bytes == lp_bytes, f"torchmetrics' and lpips' v0.1 {net} heads differ"
        template = {f"features.{k}": v for k, v in tv_features(weights=None).features.state_dict().items()}
        weights = T.seeded_state_dict(template)

        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        # lpips keeps torchvision's layer index inside each slice: net.slice2.3.weight is features.3.weight.
        sliced = {k: weights["features." + k.split(".", 1)[1]] for k in model.net.state_dict()}
        model.net.load_state_dict(sliced, strict=True)
        model.eval()

        rec = {"head_sha256": hashlib.sha256(tm_bytes).hexdigest(),
               "torchvision_features_layout": layout(template),
               "seeded_weights_fingerprint": T.fingerprint(weights)}
        with torch.no_grad():
            rec["rgb_f32"] = model(a, b).flatten().double().tolist()
            rec["gray_f32"] = model(ga.repeat(1, 3, 1, 1), gb.repeat(1, 3, 1, 1)).flatten().double().tolist()
            rec["rgb_f64"] = model.double()(a.double(), b.double()).flatten().tolist()
        out[f"lpips_{net}"] = rec
        print(net, rec["rgb_f32"], rec["gray_f32"])


class Capture:
    """Forward hooks on torchmetrics' FID network: the uint8 batch it receives and the features it returns."""

    def __init__(self, module):
        self.inputs, self.outputs = [], []
        module.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0].clone()))
        module.register_forward_hook(lambda m, args, out: self.outputs.append(out.clone()))


def record_inception(out: dict, arrays: dict) -> None:
    with inception_without_download():
        fe32 = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        fe64 = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        fids = {aa: FrechetInceptionDistance(feature=2048, normalize=True, antialias=aa) for aa in (False, True)}
    weights = T.seeded_state_dict(fe32.state_dict())
    for m in (fe32, fe64, *(f.inception for f in fids.values())):
        torch.nn.Module.load_state_dict(m, weights, strict=True)
    # torch-fidelity 0.4.0's feature_extractor_internal_dtype="float64" runs in float32 (helpers.text_to_dtype
    # maps "float64" to torch.float32), so the float64 reference is made by setting the dtype directly.
    fe64.feature_extractor_internal_dtype = torch.float64
    fe64.to(torch.float64)
    caps = {aa: Capture(f.inception) for aa, f in fids.items()}
    out["inception"] = {"layout": layout(fe32.state_dict()), "seeded_weights_fingerprint": T.fingerprint(weights),
                        "sets": {}}

    with torch.no_grad():
        for name, (spec, kinds) in T.INCEPTION_SETS.items():
            x = T.seeded_images(**spec)
            x01 = (x.repeat(1, 3 // spec["channels"], 1, 1) + 1) / 2      # [-1, 1] -> [0, 1], as medkit documents
            rec = {"input_fingerprint": T.fingerprint([x])}
            for aa, f in fids.items():
                if ("antialias" if aa else "tf1") in kinds:
                    f.update(x01, real=True)                               # torchmetrics: (imgs * 255).byte()
                    feats = caps[aa].outputs[-1].float()
                    arrays[f"{name}_{'antialias' if aa else 'tf1'}"] = feats.numpy()
            u8 = caps[False].inputs[-1]
            assert u8.dtype == torch.uint8
            rec["uint8_sha256"] = hashlib.sha256(u8.contiguous().numpy().tobytes()).hexdigest()
            (ref32,) = fe32(u8)
            diff = (ref32 - caps[False].outputs[-1]).abs().max().item()
            assert diff == 0, f"torch-fidelity and torchmetrics (antialias=False) differ by {diff} on {name}"
            rec["torchmetrics_vs_torch_fidelity_max_abs_diff"] = diff
            if "tf1_f64" in kinds:
                (ref64,) = fe64(u8[:1])                                    # float64 inside, float32 out
                assert not torch.equal(ref64, ref32[:1]), "the float64 reference ran in float32"
                arrays[f"{name}_tf1_f64"] = ref64.numpy()
            out["inception"]["sets"][name] = rec
            print(name, {k: v.shape for k, v in arrays.items() if k.startswith(name)})


def main() -> None:
    torch.set_num_threads(1)   # as the test; the float32 results then match bit for bit
    out = {"versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                        "lpips": getattr(lpips, "__version__", "0.1.4"), "torch_fidelity": torch_fidelity.__version__,
                        "torchmetrics": torchmetrics.__version__, "numpy": np.__version__},
           "lpips_inputs": {"rgb": T.LPIPS_RGB, "gray": T.LPIPS_GRAY},
           "inception_inputs": {k: v[0] for k, v in T.INCEPTION_SETS.items()}}
    arrays = {}
    record_lpips(out)
    record_inception(out, arrays)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(out, indent=1) + "\n")
    np.savez_compressed(OUT_NPZ, **arrays)
    print(f"wrote {OUT_JSON.relative_to(ROOT)} ({OUT_JSON.stat().st_size} B) and "
          f"{OUT_NPZ.relative_to(ROOT)} ({OUT_NPZ.stat().st_size} B)")


if __name__ == "__main__":
    sys.exit(main())
