"""Frequency-domain losses: the plain FFT MSE and the Focal Frequency Loss (FFL).

Notation (images x of shape (N, C, H, W); F the 2D DFT over (H, W) with norm="ortho", i.e. scaled by
1 / sqrt(H W) so that F is unitary):

    fft_mse(x_hat, x) = mean_{n,c,u,v} |F(x_hat)(u, v) - F(x)(u, v)|^2

Parseval's theorem for a unitary F gives sum_{u,v} |F(d)|^2 = sum_{h,w} |d|^2 for any image d, so with
d = x_hat - x and the same element count on both sides

    fft_mse(x_hat, x) == mse(x_hat, x)      (exactly, up to float rounding).

So ``L_mse + lambda * fft_mse`` is just ``(1 + lambda) * L_mse``: a rescaled MSE, and Adam-type
optimizers normalise the gradient scale away, so the extra term changes next to nothing. A frequency
loss only adds information when it weights frequencies unequally - which is what the focal variant does.

Focal Frequency Loss (Jiang, Dai, Wu, Loy, "Focal Frequency Loss for Image Reconstruction and
Synthesis", ICCV 2021, arXiv 2012.12821, eqs. 2-5), with the options of the official package
focal-frequency-loss 0.3.0 (github EndlessSora/focal-frequency-loss), written here from the formulas:

 1. Patches: each image is cut into p x p non-overlapping patches of (H/p, W/p), p = ``patch_factor``,
    stacked as (N, P = p^2, C, H/p, W/p) in row-major patch order.
 2. Spectra: F_hat = F(x_hat patches), F = F(x patches), norm="ortho". With ``ave_spectrum`` both are
    first averaged over the batch (keepdim, N -> 1): the minibatch-average spectrum of the paper.
 3. Spectrum weight (eq. 4), from the frequency distance |F_hat - F| (eq. 2):
        w = |F_hat - F|^alpha                        (sqrt(dRe^2 + dIm^2) ** alpha)
        w = log(w + 1)                              if ``log_matrix``
        w = w / max w                               max over (u, v) per (sample, patch, channel),
                                                     or the global max if ``batch_matrix``
        w = 0 where NaN (0 / 0 when F_hat == F), then clamp(w, 0, 1), and w is DETACHED:
    the weight is a constant of each step, so gradients flow only through the distance term.
 4. Loss (eq. 5): FFL = loss_weight * mean_{n,P,c,u,v} w * |F_hat - F|^2.
    A user ``matrix`` (broadcastable to (N or 1, P, C, H/p, W/p), values in [0, 1]) replaces w, detached.

With alpha = 0 (w = 1 everywhere), p = 1 and no batch averaging, FFL is fft_mse, i.e. the plain MSE.

All FFTs run in float32 (or float64 for float64 inputs) with autocast disabled: torch's FFTs do not
take bf16 at all, and fp16 only for power-of-two sizes on CUDA; half-precision spectra would also lose
the small high-frequency differences the loss is meant to focus on.
"""
from __future__ import annotations

import torch

FREQUENCY_KINDS = ("fft", "focal")


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    """fft2(norm="ortho") over the last two dims, in at least float32 and outside autocast."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.fft.fft2(x, norm="ortho")


def fft_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |F(pred) - F(target)|^2 over all elements (F = fft2, norm="ortho", float32).

    Equal to ``F.mse_loss(pred, target)`` by Parseval (see the module doc), so on its own it only
    rescales an MSE term; it is here as the baseline the focal loss is compared against.
    """
    if pred.shape != target.shape:
        raise ValueError(f"fft_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    d = _spectrum(pred) - _spectrum(target)
    return (d.real ** 2 + d.imag ** 2).mean()


class FocalFrequencyLoss(torch.nn.Module):
    """Focal Frequency Loss (Jiang et al., ICCV 2021, arXiv 2012.12821); see the module doc for the steps.

    Args (same names and defaults as focal-frequency-loss 0.3.0):
        loss_weight: multiplier of the loss.
        alpha: exponent of the spectrum weight w = |F_hat - F|^alpha (0 gives w = 1, i.e. fft_mse).
        patch_factor: p; images are cut into p x p patches, each transformed on its own. H and W must be
            divisible by p.
        ave_spectrum: average the spectra over the batch before comparing them.
        log_matrix: w <- log(w + 1) before normalising (flattens the weight).
        batch_matrix: normalise w by its maximum over the whole batch instead of per (sample, patch, channel).
    """

    def __init__(self, loss_weight: float = 1.0, alpha: float = 1.0, patch_factor: int = 1,
                 ave_spectrum: bool = False, log_matrix: bool = False, batch_matrix: bool = False):
        super().__init__()
        if int(patch_factor) != patch_factor or patch_factor < 1:
            raise ValueError(f"FocalFrequencyLoss patch_factor={patch_factor}: must be an integer >= 1")
        self.loss_weight = loss_weight
        self.alpha = alpha
        self.patch_factor = int(patch_factor)
        self.ave_spectrum = ave_spectrum
        self.log_matrix = log_matrix
        self.batch_matrix = batch_matrix

    def extra_repr(self) -> str:
        return (f"loss_weight={self.loss_weight}, alpha={self.alpha}, patch_factor={self.patch_factor}, "
                f"ave_spectrum={self.ave_spectrum}, log_matrix={self.log_matrix}, batch_matrix={self.batch_matrix}")

    def patch_spectra(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> complex spectra (N, P = p^2, C, H/p, W/p) of the p x p patches, row-major."""
        if x.ndim != 4:
            raise ValueError(f"FocalFrequencyLoss: expected images (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        p = self.patch_factor
        if h % p or w % p:
            raise ValueError(f"FocalFrequencyLoss: image shape {tuple(x.shape)} has H={h}, W={w} not divisible by "
                             f"patch_factor={p}; pick a patch_factor that divides both")
        x = x.reshape(n, c, p, h // p, p, w // p).permute(0, 2, 4, 1, 3, 5).reshape(n, p * p, c, h // p, w // p)
        return _spectrum(x)

    def spectrum_weight(self, dist: torch.Tensor) -> torch.Tensor:
        """The focal weight w in [0, 1] from |F_hat - F| (step 3 of the module doc); no gradient."""
        with torch.no_grad():
            w = dist ** self.alpha
            if self.log_matrix:
                w = torch.log(w + 1.0)
            w_max = w.amax() if self.batch_matrix else w.amax(dim=(-2, -1), keepdim=True)
            w = w / w_max
            w = torch.where(torch.isnan(w), torch.zeros_like(w), w)  # 0 / 0 where pred == target
            return w.clamp(0.0, 1.0)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        """FFL of pred vs target (N, C, H, W); ``matrix`` replaces the online weight (see the class doc)."""
        if pred.shape != target.shape:
            raise ValueError(f"FocalFrequencyLoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                             "must have the same shape")
        f_hat, f = self.patch_spectra(pred), self.patch_spectra(target)
        if self.ave_spectrum:
            f_hat, f = f_hat.mean(0, keepdim=True), f.mean(0, keepdim=True)
        d = f_hat - f
        dist2 = d.real ** 2 + d.imag ** 2  # |F_hat - F|^2, eq. 2
        if matrix is None:
            w = self.spectrum_weight(torch.sqrt(dist2))
        else:
            w = matrix.detach()
            try:
                fits = torch.broadcast_shapes(w.shape, dist2.shape) == dist2.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"FocalFrequencyLoss: matrix shape {tuple(w.shape)} does not broadcast to the "
                                 f"spectrum shape {tuple(dist2.shape)} = (N, patch_factor^2, C, H/p, W/p)")
            if w.min() < 0 or w.max() > 1:
                raise ValueError(f"FocalFrequencyLoss: matrix values must lie in [0, 1], got "
                                 f"[{w.min().item():.6g}, {w.max().item():.6g}]")
        return (w * dist2).mean() * self.loss_weight


def frequency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "fft", **focal_kwargs) -> torch.Tensor:
    """Frequency loss by name: "fft" -> fft_mse (no options), "focal" -> FocalFrequencyLoss(**focal_kwargs)."""
    if kind == "fft":
        if focal_kwargs:
            raise ValueError(f"frequency_loss kind='fft' takes no options, got {sorted(focal_kwargs)}; "
                             "they belong to kind='focal'")
        return fft_mse(pred, target)
    if kind == "focal":
        return FocalFrequencyLoss(**focal_kwargs)(pred, target)
    raise ValueError(f"frequency_loss kind={kind!r}: must be one of {FREQUENCY_KINDS}")
