"""The convolutional autoencoder (ConvAE).

Encoder: ``stage1``..``stageN``, each ``convs_per_stage`` x (conv -> norm -> activation) followed by
a 2x downsample (max-pool, avg-pool, or the last conv at stride 2), then a ``bottleneck``: a dense
layer on the flattened map (``bottleneck="dense"``) or a 1x1 conv (``bottleneck="conv"``, fully
convolutional). The decoder mirrors it and returns exactly the input's shape for any HxW, odd
sizes included: each encoder stage records its input size and the matching decoder stage
upsamples to at least that size and crops.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ArchitectureError
from .base import FeatureModelMixin, LayerInfo, count_params, resolve_layers
from .blocks import ACTIVATIONS, Upsample2x, check_choice, check_in_shape, count_flops, make_activation, norm_layer
from .stem import STEMS, ScatteringStem

DOWNSAMPLES = ("max", "avg", "stride")
POOLS = DOWNSAMPLES  # the old name
NORMS = (None, "batch", "group")
BOTTLENECKS = ("dense", "conv")
UPSAMPLES = ("transpose", "upsample")


class ConvAutoencoder(FeatureModelMixin, nn.Module):
    """Convolutional autoencoder for ``in_shape = (C, H, W)`` images in [0, 1].

    Parameters
    ----------
    in_shape : (int, int, int)
        Channels, height and width of the input.
    channels : sequence of int, default (32, 64, 128)
        Output channels of each encoder stage; one stage each, each halving H and W (rounding up).
    kernel_size : int, default 3
        Odd kernel size of every conv ("same" padding).
    downsample : {"max", "avg", "stride"}, default "max"
        How each stage halves its map: a 2x2 max-pool, a 2x2 average-pool, or its last conv at
        stride 2 (``model.downsample`` in a config). Positional, it is the fourth argument.
    norm : {None, "batch", "group"}, default None
    bottleneck : {"dense", "conv"}, default "dense"
        ``dense``: a ``latent_dim`` vector; ``conv``: a 1x1 conv to ``latent_dim`` channels.
    latent_dim : int, default 64
    activation : {"relu", "gelu", "silu", "leaky_relu", "elu"}, default "relu"
    upsample : {"transpose", "upsample"}, default "transpose"
        Decoder upsampling: a learned 2x2 transposed conv, or nearest-neighbour resize.
    convs_per_stage : int, default 1
    wta_spatial : bool, default False
        Winner-take-all sparsity (Makhzani & Frey 2015), training only: the code fed to the decoder
        keeps each channel's single largest value per image and zeros the rest of its map. Needs
        ``bottleneck="conv"``. :meth:`encode` and the features are never sparsified.
    wta_lifetime : float, default 0.0
        Training only: per latent channel, keep the code of the top ``wta_lifetime`` fraction of the
        batch's images (ranked by the channel's winning value) and zero the others. 0 turns it off.
    stem : {None, "scattering"}, default None, keyword only
        A fixed first stage under ``stage1`` (:class:`~convae.models.stem.ScatteringStem`): first-order
        wavelet scattering at ``stem_J`` scales and ``stem_L`` angles, nothing learned, reducing the map by
        ``2**stem_J``. With a stem the autoencoder learns to reconstruct the stem's maps (:meth:`target`),
        not the pixels, and the stem is the encoder layer ``stem`` (its features are the fixed stage alone).
    stem_J, stem_L : int, default 1 and 8, keyword only
    pool : {"max", "avg", "stride"}, optional, keyword only
        The old name of ``downsample`` (still accepted; giving both is an error).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 3,
        downsample: str | None = None,  # None: "max" (or what the old name pool= says)
        norm: str | None = None,
        bottleneck: str = "dense",
        latent_dim: int = 64,
        activation: str = "relu",
        upsample: str = "transpose",
        convs_per_stage: int = 1,
        wta_spatial: bool = False,
        wta_lifetime: float = 0.0,
        *,
        stem: str | None = None,
        stem_J: int = 1,
        stem_L: int = 8,
        pool: str | None = None,
    ):
        super().__init__()
        in_shape = check_in_shape(in_shape)
        channels = tuple(int(c) for c in channels)
        if pool is not None and downsample is not None:
            raise ArchitectureError(f"downsample={downsample!r} and pool={pool!r} given: pool is the old name of downsample, give only downsample")
        if pool is not None:
            check_choice("pool", pool, DOWNSAMPLES)
            downsample = pool
        downsample = "max" if downsample is None else downsample
        check_choice("downsample", downsample, DOWNSAMPLES)
        check_choice("norm", norm, NORMS)
        check_choice("bottleneck", bottleneck, BOTTLENECKS)
        check_choice("upsample", upsample, UPSAMPLES)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("stem", stem, STEMS)
        if not channels or min(channels) < 1:
            raise ArchitectureError(f"channels must be a non-empty list of positive ints, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ArchitectureError(f"kernel_size must be odd and positive (for 'same' padding), got {kernel_size}")
        if latent_dim < 1 or convs_per_stage < 1:
            raise ArchitectureError(f"latent_dim and convs_per_stage must be >= 1, got {latent_dim}, {convs_per_stage}")
        if wta_spatial and bottleneck != "conv":
            raise ArchitectureError("wta_spatial=True needs bottleneck='conv' (a spatial code); got bottleneck='dense'")
        if not 0.0 <= float(wta_lifetime) <= 1.0:
            raise ArchitectureError(f"wta_lifetime must be a fraction in [0, 1], got {wta_lifetime}")
        self.stem = ScatteringStem(in_shape[0], stem_J, stem_L) if stem == "scattering" else None
        c_in, h, w = in_shape if self.stem is None else (self.stem.out_channels, *self.stem.out_size(*in_shape[1:]))
        # Spatial size entering each stage; every stage needs >= 2 pixels per side to downsample (its output,
        # the last one's included, may be 1x1). Side s allows (s - 1).bit_length() stages; n stages need 2**(n-1) + 1.
        sizes = [(h, w)]
        for i in range(len(channels)):
            sh, sw = sizes[-1]
            if min(sh, sw) < 2:
                n, most = len(channels), (min(h, w) - 1).bit_length()
                step = 1 if self.stem is None else self.stem.stride  # a side of S pixels leaves the stem at ceil(S / step)
                need = step * 2 ** (n - 1) + 1
                chain = " -> ".join(f"{a}x{b}" for a, b in sizes)
                ih, iw = in_shape[1:]
                if self.stem is not None:
                    chain = f"{ih}x{iw} -> stem -> {chain}"
                article = "an" if str(ih)[0] == "8" or str(ih) in ("11", "18") else "a"
                what = f"{n} stage{'s' if n > 1 else ''}" + ("" if self.stem is None else " after the scattering stem")
                allows = "no stage" if most == 0 else f"at most {most} stage{'s' if most > 1 else ''} (the last may output 1x1)"
                raise ArchitectureError(
                    f"{article} {ih}x{iw} image is too small for {what}: each stage halves its map "
                    f"(rounding up) and needs at least 2 pixels per side coming in, but stage{i + 1} would get a {sh}x{sw} map "
                    f"({chain}). {article.capitalize()} {ih}x{iw} image allows {allows}"
                    f"{'' if self.stem is None else ' after the stem (model.stem=none for none)'}; "
                    f"{what} need{'s' if n == 1 else ''} images of at least {need}x{need}."
                )
            sizes.append((math.ceil(sh / 2), math.ceil(sw / 2)))
        self.config = dict(
            in_shape=list(in_shape), channels=list(channels), kernel_size=kernel_size, downsample=downsample, norm=norm,
            bottleneck=bottleneck, latent_dim=latent_dim, activation=activation, upsample=upsample,
            convs_per_stage=convs_per_stage,
        )
        if wta_spatial or wta_lifetime:  # recorded only when on, so older configs read the same
            self.config.update(wta_spatial=bool(wta_spatial), wta_lifetime=float(wta_lifetime))
        if self.stem is not None:
            self.config.update(stem=stem, stem_J=self.stem.J, stem_L=self.stem.L)
        self.wta_spatial, self.wta_lifetime = bool(wta_spatial), float(wta_lifetime)
        self.in_shape = in_shape
        self._sizes = sizes
        pad = kernel_size // 2

        self.stages = nn.ModuleList()
        prev = c_in
        for c in channels:
            layers: list[nn.Module] = []
            for j in range(convs_per_stage):
                stride = 2 if (downsample == "stride" and j == convs_per_stage - 1) else 1
                layers += [nn.Conv2d(prev if j == 0 else c, c, kernel_size, stride, pad), norm_layer(norm, c), make_activation(activation)]
            if downsample == "max":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            elif downsample == "avg":
                layers.append(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False))
            self.stages.append(nn.Sequential(*layers))
            prev = c

        bh, bw = sizes[-1]
        if bottleneck == "dense":
            self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(prev * bh * bw, latent_dim))
            self.from_latent = nn.Sequential(nn.Linear(latent_dim, prev * bh * bw), make_activation(activation), nn.Unflatten(1, (prev, bh, bw)))
        else:
            self.to_latent = nn.Conv2d(prev, latent_dim, 1)
            self.from_latent = nn.Sequential(nn.Conv2d(latent_dim, prev, 1), make_activation(activation))

        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        outs = (c_in,) + channels[:-1]
        for i in reversed(range(len(channels))):
            c, c_out = channels[i], outs[i]
            self.up.append(Upsample2x(c, c) if upsample == "transpose" else nn.Upsample(scale_factor=2, mode="nearest"))
            last = i == 0
            self.dec.append(nn.Conv2d(c, c_out, kernel_size, 1, pad) if last else nn.Sequential(nn.Conv2d(c, c_out, kernel_size, 1, pad), norm_layer(norm, c_out), make_activation(activation)))

        self._stem_layers = [] if self.stem is None else ["stem"]
        self.layer_names = self._stem_layers + [f"stage{i + 1}" for i in range(len(channels))] + ["bottleneck"]
        self.feature_info = self._geometry(channels, kernel_size, downsample, convs_per_stage, bottleneck, latent_dim)

    def _geometry(self, channels, k, downsample, convs, bottleneck, latent_dim) -> list[LayerInfo]:
        infos, rf, jump, offset = [], 1, 1, 0.0
        if self.stem is not None:  # its stride-2**J low-pass is centred on input pixel 0
            rf, jump = self.stem.receptive_field, self.stem.stride
            infos.append(LayerInfo("stem", 0, self.stem.out_channels, self._sizes[0], jump, (rf, rf), 0, offset))
        base = len(infos)
        for i, c in enumerate(channels):
            for j in range(convs):
                rf += (k - 1) * jump
                if downsample == "stride" and j == convs - 1:
                    jump *= 2  # odd kernel with k//2 padding keeps position 0 centred on input 0
            if downsample in ("max", "avg"):
                rf += jump
                offset += 0.5 * jump
                jump *= 2
            infos.append(LayerInfo(f"stage{i + 1}", base + i, c, self._sizes[i + 1], jump, (rf, rf), count_params(self.stages[i]), offset))
        _, h, w = self.in_shape
        n = base + len(channels)
        if bottleneck == "dense":
            infos.append(LayerInfo("bottleneck", n, latent_dim, None, 1, (h, w), count_params(self.to_latent), (h - 1) / 2))
        else:
            infos.append(LayerInfo("bottleneck", n, latent_dim, self._sizes[-1], jump, (rf, rf), count_params(self.to_latent), offset))
        return infos

    def _decoder_param_counts(self) -> dict[str, int]:
        counts = {"decoder.from_latent": count_params(self.from_latent)}
        n = len(self.dec)
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            counts[f"decoder.stage{n - i}"] = count_params(up) + count_params(dec)
        return counts

    # --- forward passes -------------------------------------------------------------------
    def forward_intermediates(self, x: torch.Tensor, layers=None, stop_early: bool = True) -> dict[str, torch.Tensor]:
        """Outputs of the requested encoder layers, by name, in depth order.

        ``layers``: names, indices (negative from the deepest) or None for all. With
        ``stop_early=True`` nothing past the deepest requested layer is computed.
        """
        wanted = resolve_layers(self.layer_names, layers)
        deepest = max(self.layer_names.index(n) for n in wanted)
        last = deepest if stop_early else len(self.layer_names) - 1
        out: dict[str, torch.Tensor] = {}
        x = self.target(x)
        if "stem" in wanted:
            out["stem"] = x
        base = len(self._stem_layers)
        for i, stage in enumerate(self.stages):  # (B, C_i, H_i, W_i)
            if base + i > last:
                break
            x = stage(x)
            if self.layer_names[base + i] in wanted:
                out[self.layer_names[base + i]] = x
        if last == base + len(self.stages):
            z = self.to_latent(x)
            if "bottleneck" in wanted:
                out["bottleneck"] = z
        return {n: out[n] for n in self.layer_names if n in out}

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the autoencoder reconstructs from images ``x``: the stem's maps, or ``x`` itself without a stem.
        :meth:`reconstruct_logits` and :meth:`decode` work in this space. The stem runs in fp32 whatever the autocast
        (training, evaluation and extraction see the same maps); it has no parameters, and gradients reach ``x``
        through it (activation maximization)."""
        if self.stem is None:
            return x
        with torch.autocast(x.device.type, enabled=False):
            return self.stem(x.float())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> latent (B, latent_dim) or (B, latent_dim, h, w)."""
        x = self.target(x)
        return self._encode_target(x)

    def _encode_target(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.to_latent(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        x = self.from_latent(z)
        n = len(self.stages)
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            th, tw = self._sizes[n - 1 - i]  # the size that entered the mirrored encoder stage
            x = up(x)[..., :th, :tw]
            x = dec(x)
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> reconstruction in [0, 1] of :meth:`target` (the images (B, C, H, W) without a stem)."""
        return torch.sigmoid(self.decode_logits(z))

    def sparsify(self, z: torch.Tensor) -> torch.Tensor:
        """Winner-take-all sparsity of a code (training only; identity when both options are off)."""
        if self.wta_spatial:  # (B, C, h, w): each map keeps its largest value
            flat = z.flatten(2)
            winners = flat == flat.amax(dim=2, keepdim=True)
            z = (flat * winners).view_as(z)
        if self.wta_lifetime > 0:  # per channel, the batch's top fraction of images keeps its code
            b = z.shape[0]
            k = max(1, math.ceil(self.wta_lifetime * b))
            strength = z.flatten(2).amax(dim=2) if z.dim() == 4 else z  # (B, C)
            threshold = strength.topk(k, dim=0).values[-1:]  # (1, C)
            keep = (strength >= threshold).to(z.dtype)
            z = z * (keep[..., None, None] if z.dim() == 4 else keep)
        return z

    def reconstruct_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the reconstruction of ``x``, a batch of :meth:`target` (the images themselves without a stem):
        what training scores against ``target(images)``."""
        z = self._encode_target(x)
        if self.training and (self.wta_spatial or self.wta_lifetime > 0):
            z = self.sparsify(z)
        return self.decode_logits(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the reconstruction of :meth:`target` (of the images themselves without a stem), in [0, 1]."""
        return torch.sigmoid(self.reconstruct_logits(self.target(x)))

    def flops_per_image(self) -> int:
        """Multiply-accumulates x 2 of one forward pass (convs and linears, the stem's included), from the architecture."""
        stem = 0 if self.stem is None else self.stem.flops(*self.in_shape[1:])
        return count_flops(self, self.in_shape) + stem


