"""The Tiny Faces network (HR-ResNet101 "hybrid resolution" detector) as a torch module.

:class:`TinyFacesNet` reproduces the eval-mode forward pass of two references:

``variant="pytorch"`` -- github varunagrawal/tiny-faces-pytorch (``DetectionModel``, a07e5da)
    torchvision ResNet trunk (stride on the 3x3 conv, padded ``pool1``) held as ``self.model``,
    ``score_res3`` (1x1, 512->125) on layer2, ``score_res4`` (1x1, 1024->125) on layer3,
    ``score4_upsample`` = ConvTranspose2d(125, 125, 4, stride 2, padding 1, no bias, bilinear
    init, frozen). The upsampled res4 score (``2*ceil(H/16)`` rows) is cropped at the END to the
    res3 score's size and added. Output: (N, 125, ceil(H/8), ceil(W/8)).
    Parameter names match the port, so ``{"model": state_dict}`` checkpoints load strictly.

``variant="matconvnet"`` -- the authors' hr_res101.mat as run by ``tiny_face_detector.m``
    Differences from the port (all in the network's geometry; weights are converted by
    :mod:`.weights`):

    * trunk: Caffe ResNet -- stride 2 on the first 1x1 conv of ``res3a``/``res4a``, and
      ``pool1`` 3x3/2 without padding in ceil mode (MatConvNet pad ``[0 1 0 1]``).
    * ``score4`` (dagnn.ConvTranspose, upsample 2, 4x4 bilinear filter) runs at test time with
      ``crop = [1 2 1 2]`` ([top bottom left right]): ``2*h4 - 1`` rows, i.e. the torch layer
      with padding 1 minus its last row and column.
    * ``cropx`` = ``dagnn.Crop('crop', [0 0])`` crops ``score_res3`` to ``score4``'s size.
      ``Crop.getAdaptedCrops`` gives ``[0, dv, 0, du]`` for base crop ``[0 0]``: every removed
      row/column comes off the bottom/right, so it is NOT a centre crop (the TensorFlow port's
      ``extract_glimpse(centered=True)`` differs here). The difference is 0 or 1 cell.

    Output size: with ``a = ceil(H/2)``, ``b = floor(a/2)`` (pool1), ``h3 = ceil(b/2)``,
    ``h4 = ceil(h3/2)``, the score map has ``2*h4 - 1`` rows (``h3`` if ``h3`` is odd, else
    ``h3 - 1``), and the same for columns -- generally NOT ``ceil(H/8)``; use
    :meth:`TinyFacesNet.output_size` or the map's own shape. Needs H, W >= 3.

    Receptive fields (0-based pixel centre of score cell y): the ``score4`` path is centred at
    ``8*y - 2`` (= MATLAB's 1-based ``(fy-1)*8 - 1``, the authors' decode offset), the
    ``score_res3`` path at ``8*y + 2``; the torchvision trunk of the port gives ``8*y - 4``
    (score4 path) and ``8*y`` (res3 path), and the port decodes with ``8*y - 1``.

    Outside the network the release also differs in input normalisation (raw 0..255 RGB minus
    ``net.meta.normalization.averageImage``, no std; the port uses /255 then ImageNet mean/std),
    in its templates (``net.meta.clusters``), template policy and constants (demo
    MAX_INPUT_DIM 5000, thresholds); those live in :class:`DetectorConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinyfaces_trt.core.config import NUM_CHANNELS, NUM_TEMPLATES, VARIANTS, DetectorConfig

from tinyfaces_trt.export.resnet import RES3_CHANNELS, RES4_CHANNELS, ResNetTrunk


def bilinear_upsample_filter(channels: int, kernel_size: int = 4) -> torch.Tensor:
    """(channels, channels, k, k) ConvTranspose2d weight doing per-channel bilinear upsampling.

    The port's ``_init_bilinear`` (same as the authors' ``bilinear_u.m``): for k = 4 the 1-D
    taps are [0.25, 0.75, 0.75, 0.25]; channel i only feeds channel i.
    """
    k = kernel_size
    factor = (k + 1) // 2
    center = factor if k % 2 == 1 else factor + 0.5
    taps = 1.0 - np.abs(np.arange(1, k + 1) - center) / factor
    weight = torch.zeros(channels, channels, k, k)
    kernel = torch.from_numpy(np.outer(taps, taps)).float()
    for i in range(channels):
        weight[i, i] = kernel
    return weight


class TinyFacesNet(nn.Module):
    """Tiny Faces detector network: (N, 3, H, W) normalised input -> (N, 125, h', w') scores.

    Channels: 25 classification logits, then tx, ty, tw, th (25 each). ``h', w'`` is
    ``ceil(H/8), ceil(W/8)`` for ``variant="pytorch"``; see the module docstring and
    :meth:`output_size` for ``"matconvnet"``.

    Args:
        depth: trunk depth, 50 or 101 (the released detectors are ResNet-101).
        variant: ``"pytorch"`` or ``"matconvnet"``.
    """

    def __init__(self, depth: int = 101, variant: str = "pytorch") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        caffe = variant == "matconvnet"
        self.depth = depth
        self.variant = variant
        # Named "model" as in the port's DetectionModel, so keys are model.conv1.weight, ...
        self.model = ResNetTrunk(depth, stride_in_1x1=caffe, ceil_pool=caffe)
        self.score_res3 = nn.Conv2d(RES3_CHANNELS, NUM_CHANNELS, 1)
        self.score_res4 = nn.Conv2d(RES4_CHANNELS, NUM_CHANNELS, 1)
        self.score4_upsample = nn.ConvTranspose2d(NUM_CHANNELS, NUM_CHANNELS, 4, stride=2,
                                                  padding=1, bias=False)
        with torch.no_grad():
            self.score4_upsample.weight.copy_(bilinear_upsample_filter(NUM_CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(*self.model(x))

    def fuse(self, res3: torch.Tensor, res4: torch.Tensor) -> torch.Tensor:
        """The detection head: score both taps, upsample the res4 score, crop and add."""
        score3 = self.score_res3(res3)
        score4 = self.score4_upsample(self.score_res4(res4))
        if self.variant == "matconvnet":
            # crop [1 2 1 2]: padding=1 already removed one row/col each side; drop one more
            # at the bottom/right. Then dagnn.Crop([0 0]) trims score_res3 at its bottom/right.
            score4 = score4[:, :, :-1, :-1]
            score3 = score3[:, :, :score4.shape[2], :score4.shape[3]]
        else:
            # The port's eval branch: 2*ceil(H/16) >= ceil(H/8) rows, extra row cut at the end.
            score4 = score4[:, :, :score3.shape[2], :score3.shape[3]]
        return score3 + score4

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Score-map (rows, cols) this network produces for an input of that size."""
        return score_map_size(height, width, self.variant)

    def detector_config(self, **overrides: Any) -> DetectorConfig:
        """The default :class:`DetectorConfig` of this network's variant."""
        return DetectorConfig.for_variant(self.variant, **overrides)


def score_map_size(height: int, width: int, variant: str = "pytorch") -> tuple[int, int]:
    """Rows and columns of the score map for an (height, width) input (see module docstring)."""

    def one(n: int) -> int:
        a = math.ceil(n / 2)  # conv1 7x7/2 pad 3
        if variant == "matconvnet":
            b = a // 2  # pool1 3x3/2, Caffe ceil mode without padding
            h3 = math.ceil(b / 2)
            return 2 * math.ceil(h3 / 2) - 1
        return math.ceil(math.ceil(a / 2) / 2)

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return one(int(height)), one(int(width))


# ---------------------------------------------------------------------------------------------
# Seeded random weights with realistic score maps (for tests and tooling without a checkpoint)
# ---------------------------------------------------------------------------------------------

_CALIB_SIZE = 96
_CLS_STD, _REG_STD = 1.2, 0.1          # target std of cls logits / regression outputs
_CLS_POSITIVE = (0.01, 0.05)            # fraction of cells with logit > 0, per template


def build_model(depth: int = 101, variant: str = "pytorch", seed: int = 0) -> TinyFacesNet:
    """A :class:`TinyFacesNet` in eval mode with seeded random weights giving plausible scores.

    Plain random init through 20+ residual blocks gives useless magnitudes, so: convolutions
    get Kaiming-normal weights, BatchNorm affine params are drawn in ranges typical of trained
    ResNets (small ``bn3`` gammas), BN running statistics are calibrated on a seeded batch of
    image-like inputs (pixel noise, smooth, blocky; normalised as the variant's config does)
    so activations stay O(1), and the heads are scaled so that over that batch each
    classification channel has 1-5% of cells above logit 0 (on new inputs: a few percent
    for blocky images, fewer for smooth ones, up to ~20% for pure pixel noise) and the
    regression channels have std ~0.1 around 0 (|t| stays well below 1 on image-like inputs,
    so exp(tw) cannot overflow).

    Deterministic: the same (depth, variant, seed) gives bitwise-identical weights on CPU
    (calibration runs in float64 and derived values are rounded to 12 significant bits, so
    thread-count-dependent summation order cannot leak into the float32 weights).
    """
    model = TinyFacesNet(depth, variant)
    gen = torch.Generator().manual_seed(int(seed))
    _init_trunk(model.model, gen)
    calib = _calibration_batch(variant, seed)
    model.double()
    with torch.no_grad():
        features = _calibrate_batchnorm(model, calib)
        _fit_heads(model, features, gen)
    model.seed = int(seed)  # recorded in an export's manifest: tf-parity compares it
    return model.float().eval()


def _round_bits(t: torch.Tensor, bits: int = 12) -> torch.Tensor:
    mantissa, exponent = torch.frexp(t)
    return torch.ldexp(torch.round(mantissa * (1 << bits)) / (1 << bits), exponent)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _init_trunk(trunk: ResNetTrunk, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, module in trunk.named_modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                std = math.sqrt(2.0 / fan_out)
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                residual_end = name.endswith("bn3")
                module.weight.copy_(_uniform(gen, n, 0.15, 0.35) if residual_end
                                    else _uniform(gen, n, 0.6, 1.0))
                module.bias.copy_(_uniform(gen, n, -0.2, 0.1))


def _calibration_batch(variant: str, seed: int) -> torch.Tensor:
    """Three image-like float64 inputs: pixel noise, smooth gradients, flat blocks with edges."""
    rng = np.random.default_rng([int(seed), 0x7F4A])
    s = _CALIB_SIZE
    noise = rng.integers(0, 256, size=(3, s, s)).astype(np.float64)
    coarse = torch.from_numpy(rng.uniform(0.0, 255.0, size=(2, 3, 8, 8)))
    smooth = F.interpolate(coarse[:1], size=(s, s), mode="bilinear", align_corners=False)[0]
    blocks = F.interpolate(coarse[1:], size=(s, s), mode="nearest")[0]
    soft = np.stack([smooth.numpy(), blocks.numpy()])
    soft = np.clip(soft + rng.normal(0.0, 8.0, size=soft.shape), 0.0, 255.0)
    pixels = np.concatenate([noise[None], soft])
    a, b = DetectorConfig.for_variant(variant).normalization.scale_and_bias()
    a, b = (v.astype(np.float64)[None, :, None, None] for v in (a, b))
    return torch.from_numpy(pixels * a + b)


def _calibrate_batchnorm(model: TinyFacesNet,
                         calib: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets BN running stats to the batch statistics of ``calib``; returns (res3, res4)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly the batch statistics
    model.train()
    features = model.model(calib)
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
        bn.running_mean.copy_(_round_bits(bn.running_mean))
        bn.running_var.copy_(_round_bits(bn.running_var))
        bn.num_batches_tracked.zero_()
    return features


def _fit_heads(model: TinyFacesNet, features: tuple[torch.Tensor, torch.Tensor],
               gen: torch.Generator) -> None:
    for conv in (model.score_res3, model.score_res4):
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen)
                          * math.sqrt(1.0 / conv.in_channels))
        conv.bias.zero_()
    positive = _uniform(gen, NUM_TEMPLATES, *_CLS_POSITIVE).double()
    out = model.fuse(*features).transpose(0, 1)  # (125, images, h, w), no bias yet
    std = out.reshape(NUM_CHANNELS, -1).std(dim=1)
    target = torch.full((NUM_CHANNELS,), _REG_STD, dtype=torch.float64)
    target[:NUM_TEMPLATES] = _CLS_STD
    gain = _round_bits(target / std)
    out = out * gain[:, None, None, None]
    bias = -out.reshape(NUM_CHANNELS, -1).mean(dim=1)
    cls = out[:NUM_TEMPLATES].reshape(NUM_TEMPLATES, -1)
    bias[:NUM_TEMPLATES] = -torch.stack([torch.quantile(cls[c], 1.0 - positive[c])
                                         for c in range(NUM_TEMPLATES)])
    # The upsampling filter is channel-diagonal, so scaling channel c of both 1x1 heads scales
    # output channel c; all bias goes on score_res3 (a score_res4 bias would be upsampled with
    # weaker borders).
    for conv in (model.score_res3, model.score_res4):
        conv.weight.mul_(gain[:, None, None, None])
    model.score_res3.bias.copy_(_round_bits(bias))
