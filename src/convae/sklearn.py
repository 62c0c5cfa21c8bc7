"""scikit-learn transformers: an autoencoder's encoder, cut at any depth, as features.

- :class:`ConvAEFeatures` / :class:`DenseAEFeatures`: ``fit`` trains a ConvAE / FCAE on X
  (labels are ignored: it is unsupervised), ``transform`` returns pooled encoder features.
- :class:`EncoderFeatures`: the same transform from an already trained run directory.

All three follow scikit-learn's contract, so ``Pipeline``, ``GridSearchCV`` (over ``ae__*`` and
classifier parameters) and ``clone`` work::

    Pipeline([("ae", ConvAEFeatures(layers=["stage2"], pool="avg2")), ("clf", LogisticRegression())])

X may be

- images: a numpy array (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 (0..255) or float in
  [0, 1], read by ``convae.data.as_images`` (integers in 0..255 are taken as uint8);
- a list of image file paths, decoded by ``convae.data.load_image_files`` (``image_size`` and
  ``image_channels`` at fit; at transform, files are decoded to the fitted shape);
- a 2-D array (N, D) of flattened images when ``image_shape=(H, W)`` or ``(C, H, W)`` is set
  (e.g. ``load_digits().data / 16`` with ``image_shape=(8, 8)``); for ``DenseAEFeatures``
  without ``image_shape``, a 2-D array is tabular: each row is a vector of D values used as
  given (uint8 divided by 255), and ``n_features_in_`` is set.

The output is float32 (N, n_features), named by :meth:`get_feature_names_out` (e.g.
``stage2_avg2x2_c017_y0x1``: layer, pooling, channel, grid cell). The input is never modified.

scikit-learn's estimator checks (``sklearn.utils.estimator_checks``) feed arbitrary 2-D tabular
data. ``DenseAEFeatures`` passes them (tests/test_sklearn.py runs the suite). For
``ConvAEFeatures`` and ``EncoderFeatures`` a 2-D X of arbitrary width is not an image and is
refused with a DataError, so the tabular checks cannot apply; the contract they check (clone,
get/set_params, NotFittedError, no change to the input, idempotent fit, pickling, batch-size
invariance, feature names) is tested on images instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted

from .config import ModelConfig, RunConfig, TrainConfig, resolve_length, resolve_stem, set_value, validate
from .data import as_images, convert_images, load_image_files
from .errors import DataError
from .features import extract_features, feature_layout, feature_names, parse_pool, run_precision
from .models import build_from_config
from .runs import load_run
from .runtime import resolve_device
from .training import as_dataset, split_indices, train_model
from .training.budget import plan_to_budget

__all__ = ["ConvAEFeatures", "DenseAEFeatures", "EncoderFeatures"]


def _is_paths(X) -> bool:
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(p, (str, os.PathLike)) for p in X)


class _ImageInput:
    """Input handling shared by the three transformers: X -> N×C×H×W tensor (uint8 or float32)."""

    _accepts_vectors = False  # DenseAEFeatures reads a plain 2-D X as tabular vectors

    def _images(self, X, *, fit: bool) -> torch.Tensor:
        if isinstance(X, (str, os.PathLike)):
            raise DataError(f"X is one path ({X!s}); pass a list of image paths or an array of images")
        name = type(self).__name__
        if _is_paths(X):
            if fit and not hasattr(self, "in_shape_"):
                size, channels = self.image_size, self.image_channels
            else:
                channels, size = self.in_shape_[0], self.in_shape_[1:]
            images, skipped = load_image_files(list(X), image_size=size, channels=channels)
            return images
        X = check_array(X, accept_sparse=False, allow_nd=True, dtype="numeric", ensure_all_finite=True,
                        ensure_min_features=1, input_name="X", estimator=self)
        image_shape = getattr(self, "image_shape", None)
        if X.ndim == 2 and image_shape is None and self._accepts_vectors:
            if fit:
                self.n_features_in_ = X.shape[1]
            elif X.shape[1] != self.n_features_in_:
                raise DataError(f"X has {X.shape[1]} features, but {name} is expecting {self.n_features_in_} features as input")
            dtype = torch.uint8 if X.dtype == np.uint8 else torch.float32
            return torch.tensor(X, dtype=dtype).view(len(X), 1, 1, X.shape[1])  # a copy: X is never touched
        if X.ndim == 2:
            if image_shape is None:
                raise DataError(f"{name} reads images, but X has shape {X.shape}: pass (N, H, W), (N, H, W, C) or "
                                "(N, C, H, W) arrays or image paths, or set image_shape=(H, W) to read each row as an image")
            shape = tuple(int(v) for v in image_shape)
            if len(shape) not in (2, 3) or math.prod(shape) != X.shape[1]:
                raise DataError(f"image_shape={tuple(image_shape)} does not fit rows of {X.shape[1]} values; "
                                "it must be (H, W) or (C, H, W) with H*W*C equal to X.shape[1]")
            X = X.reshape(len(X), *shape)
            if len(shape) == 3:
                X = X.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C), which as_images reads unambiguously
        return as_images(X, name="X")

    def _check_shape(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(images.shape[1:])
        if shape != tuple(self.in_shape_):
            if getattr(self, "convert", False):
                return convert_images(images, image_size=self.in_shape_[1:], channels=self.in_shape_[0])
            raise DataError(f"X holds images of (C, H, W) = {shape}, but {type(self).__name__} was fitted on "
                            f"{tuple(self.in_shape_)}")
        return images

    def _transform_images(self, images: torch.Tensor) -> np.ndarray:
        return extract_features(self.model_, images, layers=self.layers_, pool=self.pool_, batch_size=int(self.batch_size),
                                precision=self.precision_)

    def transform(self, X) -> np.ndarray:
        """Features of X: float32 array (N, n_features)."""
        check_is_fitted(self, "model_")
        return self._transform_images(self._check_shape(self._images(X, fit=False)))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns, e.g. ``stage2_avg2x2_c017_y0x1`` (``input_features`` is not used)."""
        check_is_fitted(self, "model_")
        return np.asarray(feature_names(self.model_, self.layers_, self.pool_), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.target_tags.required = False
        return tags


AUTO_FLATTEN_MAX = 64  # positions per map (8x8) up to which pool="auto" keeps every position


def resolve_pool(model, layers, pool):
    """The Pooling of ``pool`` for these layers; ``"auto"`` keeps every position of small maps
    (Fashion-MNIST's 7x7 and 4x4) and averages larger ones to a 4x4 grid.

    Flattened maps gave the best linear-probe features on 28x28 images (docs/RESULTS.md); on large
    images they would give hundreds of thousands of features per image.
    """
    if pool == "auto":
        sizes = [info.spatial for info in model.feature_info if info.name in layers and info.spatial is not None]
        pool = "flatten" if all(h * w <= AUTO_FLATTEN_MAX for h, w in sizes) else "avg4"
    return parse_pool(pool)


_MODEL, _TRAIN = ModelConfig(), TrainConfig()  # the defaults every estimator parameter below is taken from
TRAIN_PARAMS = tuple(f.name for f in dataclasses.fields(TrainConfig))  # each one an estimator parameter
# Where an estimator's default differs from TrainConfig's, on purpose (tests/test_sklearn.py lists the same):
ESTIMATOR_DEFAULTS = {"val_fraction": 0.0}  # fit trains on every image of X; no validation split


def _plain(value):
    """numpy scalars and arrays (from parameter grids) as the Python values a config holds."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _AutoencoderFeatures(_ImageInput, TransformerMixin, BaseEstimator):
    """Shared fit of ConvAEFeatures and DenseAEFeatures: build, train, keep the encoder.

    The parameters that are config fields (``_model_params`` of :class:`convae.config.ModelConfig` and
    every field of :class:`convae.config.TrainConfig`) become a :class:`convae.config.RunConfig`, checked
    by :func:`convae.config.validate` with messages that name the parameter; the model is built from it
    by :func:`convae.models.build_from_config`, as ``convae train`` builds it.
    """

    _kind = ""
    _model_params: tuple[str, ...] = ()

    def _run_config(self) -> RunConfig:
        """The RunConfig of these parameters; ConfigError naming the parameter when one is invalid."""
        source = type(self).__name__
        cfg = RunConfig(model=ModelConfig(kind=self._kind))
        for section, names in (("model", self._model_params), ("train", TRAIN_PARAMS)):
            for name in names:
                set_value(cfg, f"{section}.{name}", _plain(getattr(self, name)), source=source, given=True, label=name)
        validate(cfg, source=source)
        return cfg

    def _model_kwargs(self) -> dict:
        """The model constructor's arguments these parameters give (as ``ModelConfig.model_kwargs``)."""
        return self._run_config().model.model_kwargs()

    def fit(self, X, y=None):
        """Train the autoencoder on X (``y`` is ignored) and return self."""
        for attr in ("model_", "in_shape_", "n_features_in_"):
            self.__dict__.pop(attr, None)  # a refit starts from nothing
        cfg = self._run_config()  # bad parameters fail before X is read
        images = self._images(X, fit=True)
        in_shape = tuple(int(v) for v in images.shape[1:])
        resolve_stem(cfg, in_shape)
        with torch.random.fork_rng(devices=[]):  # the initial weights come from `seed`, the global RNG is untouched
            torch.manual_seed(cfg.train.seed)
            model = build_from_config(cfg, in_shape)
        layers = model.resolve_layers(self.layers)
        pooling = resolve_pool(model, layers, self.pool)
        feature_layout(model, layers, pooling)  # bad layers or pooling fail before training
        resolve_length(cfg)  # the FCAE's default length is 10 epochs
        train_idx, val_idx = split_indices(len(images), cfg.train.val_fraction, cfg.train.seed)
        if cfg.train.time_budget is not None and cfg.train.planned_steps is None:  # fit within the budget on this machine
            cfg.train.planned_steps = plan_to_budget(model, as_dataset(images), cfg.train, train_idx, val_idx)
        self.planned_steps_ = cfg.train.planned_steps
        state = torch.random.get_rng_state()
        try:
            result = train_model(model, images, cfg.train, train_indices=train_idx, val_indices=val_idx, progress=self.progress)
        finally:
            torch.random.set_rng_state(state)  # train_model seeds the global RNG; give the caller theirs back
        self.model_ = result.model.eval()
        self.in_shape_ = in_shape
        self.layers_ = layers
        self.pool_ = pooling.spec
        self.precision_ = result.precision
        self.history_ = result.history
        self.n_features_out_ = sum(n for _, n in feature_layout(model, layers, pooling))
        return self


class ConvAEFeatures(_AutoencoderFeatures):
    """Train a convolutional autoencoder on X; transform X into its encoder's pooled features.

    Every architecture and training parameter is the :class:`convae.config.ModelConfig` /
    :class:`convae.config.TrainConfig` field of the same name, with its default (``val_fraction``
    aside), and is checked as ``convae train`` checks it.

    Parameters
    ----------
    layers : str, int or list of them, default (-3, -2)
        Encoder layers (``stem``, ``stage1``..``stageN``, ``bottleneck``, or indices, negative from the
        deepest); several are concatenated in the order given. The default is the two deepest
        stages (``stage1`` and ``stage2`` of the default two, over the scattering stem), the best
        features measured on Fashion-MNIST (docs/RESULTS.md).
    pool : str, default "auto"
        ``avg``, ``max``, ``avgN``/``maxN`` (NxN grid), ``spp:1,2,4`` or ``flatten`` (see
        :mod:`convae.features`). ``auto`` flattens maps of up to 8x8 positions and averages
        larger ones to a 4x4 grid. The dense bottleneck is a vector and passes through.
    stem, stem_J, stem_L, channels, kernel_size, norm, bottleneck, latent_dim, activation, upsample, convs_per_stage, wta_spatial, wta_lifetime
        The architecture (``stem="auto"``: a fixed first stage of oriented filters on images of 16 pixels a side or more; ``"scattering"``, ``"none"``), as in :class:`convae.ConvAutoencoder`, with the defaults of
        :class:`convae.config.ModelConfig` (``norm="auto"`` is BatchNorm; ``"none"`` or None is none).
    downsample : {"max", "avg", "stride"}, default "max"
        How each stage halves the map (``ConvAutoencoder(downsample=...)``, ``model.downsample``;
        ``pool`` here is the feature pooling).
    epochs, batch_size, lr, weight_decay, optimizer, loss, schedule, noise, mask_ratio, flip, shift, seed, precision, channels_last, threads, device, compile, num_workers, grad_clip, max_steps, time_budget, planned_steps
        Training, as in :class:`convae.TrainConfig`, with its defaults (``flip`` and ``shift``
        augment the images). ``precision="auto"`` is bf16 where it is measurably faster here (a GPU with bf16, or a CPU where a conv step ran it 1.25x faster than fp32);
        the transform uses the same precision.
    val_fraction : float, default 0.0
        Fraction of X held out to validate after every epoch (``history_`` then holds ``val_mse``,
        ``val_psnr``, ``val_ssim``). Unlike ``TrainConfig`` (0.1), the default trains on every image.
    image_shape : (H, W) or (C, H, W), optional
        Read each row of a 2-D X as an image of this shape.
    image_size : (H, W) or "HxW", optional; image_channels : {1, 3}, optional
        How image files are decoded at fit (see ``convae.data``).
    progress : bool, default False
        Show a progress bar while training.

    Attributes
    ----------
    model_ : ConvAutoencoder, trained, in eval mode
    in_shape_ : (C, H, W) of the training images
    layers_ : list of str, the resolved layer names
    pool_ : str, the canonical pooling spec
    precision_ : str, the resolved precision
    history_ : list of dict, one training record per epoch
    n_features_out_ : int
    """

    _kind = "conv"
    _model_params = ("channels", "kernel_size", "downsample", "norm", "bottleneck", "latent_dim", "activation", "upsample",
                     "convs_per_stage", "wta_spatial", "wta_lifetime", "stem", "stem_J", "stem_L")

    def __init__(self, layers=(-3, -2), pool="auto", *, stem=_MODEL.stem, stem_J=_MODEL.stem_J, stem_L=_MODEL.stem_L,
                 channels=tuple(_MODEL.channels), kernel_size=_MODEL.kernel_size,
                 downsample=_MODEL.downsample, norm=_MODEL.norm, bottleneck=_MODEL.bottleneck, latent_dim=_MODEL.latent_dim,
                 activation=_MODEL.activation, upsample=_MODEL.upsample, convs_per_stage=_MODEL.convs_per_stage,
                 wta_spatial=_MODEL.wta_spatial, wta_lifetime=_MODEL.wta_lifetime,
                 epochs=_TRAIN.epochs, batch_size=_TRAIN.batch_size, lr=_TRAIN.lr, weight_decay=_TRAIN.weight_decay,
                 optimizer=_TRAIN.optimizer, loss=_TRAIN.loss, schedule=_TRAIN.schedule, noise=_TRAIN.noise,
                 mask_ratio=_TRAIN.mask_ratio, flip=_TRAIN.flip, shift=_TRAIN.shift, val_fraction=ESTIMATOR_DEFAULTS["val_fraction"],
                 seed=_TRAIN.seed, precision=_TRAIN.precision, channels_last=_TRAIN.channels_last, threads=_TRAIN.threads,
                 device=_TRAIN.device, compile=_TRAIN.compile, num_workers=_TRAIN.num_workers, grad_clip=_TRAIN.grad_clip,
                 max_steps=_TRAIN.max_steps, time_budget=_TRAIN.time_budget, planned_steps=_TRAIN.planned_steps,
                 image_shape=None, image_size=None, image_channels=None, progress=False):
        self.layers = layers
        self.pool = pool
        self.stem = stem
        self.stem_J = stem_J
        self.stem_L = stem_L
        self.channels = channels
        self.kernel_size = kernel_size
        self.downsample = downsample
        self.norm = norm
        self.bottleneck = bottleneck
        self.latent_dim = latent_dim
        self.activation = activation
        self.upsample = upsample
        self.convs_per_stage = convs_per_stage
        self.wta_spatial = wta_spatial
        self.wta_lifetime = wta_lifetime
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.loss = loss
        self.schedule = schedule
        self.noise = noise
        self.mask_ratio = mask_ratio
        self.flip = flip
        self.shift = shift
        self.val_fraction = val_fraction
        self.seed = seed
        self.precision = precision
        self.channels_last = channels_last
        self.threads = threads
        self.device = device
        self.compile = compile
        self.num_workers = num_workers
        self.grad_clip = grad_clip
        self.max_steps = max_steps
        self.time_budget = time_budget
        self.planned_steps = planned_steps
        self.image_shape = image_shape
        self.image_size = image_size
        self.image_channels = image_channels
        self.progress = progress


class DenseAEFeatures(_AutoencoderFeatures):
    """Train a fully connected autoencoder (FCAE) on X; transform X into its encoder's features.

    Parameters as :class:`ConvAEFeatures`, with the FCAE's architecture ``hidden`` (units per
    hidden layer), ``latent_dim``, ``activation``, ``norm`` (``"auto"``: none) instead of the conv
    ones, and the same training parameters and defaults. Layers are
    ``hidden1``..``hiddenN`` and ``bottleneck``; every layer is a vector, so ``pool`` changes
    nothing (it is kept for a uniform interface). A 2-D X without ``image_shape`` is tabular
    (rows of D values, ``n_features_in_ = D``).
    """

    _kind = "dense"
    _accepts_vectors = True
    _model_params = ("hidden", "latent_dim", "activation", "norm")

    def __init__(self, layers="bottleneck", pool="avg", *, hidden=tuple(_MODEL.hidden), latent_dim=_MODEL.latent_dim,
                 activation=_MODEL.activation, norm=_MODEL.norm,
                 epochs=_TRAIN.epochs, batch_size=_TRAIN.batch_size, lr=_TRAIN.lr, weight_decay=_TRAIN.weight_decay,
                 optimizer=_TRAIN.optimizer, loss=_TRAIN.loss, schedule=_TRAIN.schedule, noise=_TRAIN.noise,
                 mask_ratio=_TRAIN.mask_ratio, flip=_TRAIN.flip, shift=_TRAIN.shift, val_fraction=ESTIMATOR_DEFAULTS["val_fraction"],
                 seed=_TRAIN.seed, precision=_TRAIN.precision, channels_last=_TRAIN.channels_last, threads=_TRAIN.threads,
                 device=_TRAIN.device, compile=_TRAIN.compile, num_workers=_TRAIN.num_workers, grad_clip=_TRAIN.grad_clip,
                 max_steps=_TRAIN.max_steps, time_budget=_TRAIN.time_budget, planned_steps=_TRAIN.planned_steps,
                 image_shape=None, image_size=None, image_channels=None, progress=False):
        self.layers = layers
        self.pool = pool
        self.hidden = hidden
        self.latent_dim = latent_dim
        self.activation = activation
        self.norm = norm
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.loss = loss
        self.schedule = schedule
        self.noise = noise
        self.mask_ratio = mask_ratio
        self.flip = flip
        self.shift = shift
        self.val_fraction = val_fraction
        self.seed = seed
        self.precision = precision
        self.channels_last = channels_last
        self.threads = threads
        self.device = device
        self.compile = compile
        self.num_workers = num_workers
        self.grad_clip = grad_clip
        self.max_steps = max_steps
        self.time_budget = time_budget
        self.planned_steps = planned_steps
        self.image_shape = image_shape
        self.image_size = image_size
        self.image_channels = image_channels
        self.progress = progress


class EncoderFeatures(_ImageInput, TransformerMixin, BaseEstimator):
    """Features from the encoder of an already trained run directory.

    ``fit`` loads the run and checks that X's images have the run's (C, H, W) (or, with
    ``convert=True``, converts them by ``convae.data``'s rule); it learns nothing from X.

    Parameters
    ----------
    run_dir : str or Path
        A run directory written by ``convae train``.
    layers, pool : as in :class:`ConvAEFeatures` (here default "bottleneck" and "avg"; ``pool="auto"`` works too)
    batch_size : int, default 128
    precision : {None, "auto", "fp32", "bf16"}, default None
        None: the precision the run was trained with.
    device : str, default "cpu"
    convert : bool, default False
        Resize / channel-convert images that do not match the run.
    image_shape : (H, W) or (C, H, W), optional
        Read each row of a 2-D X as an image of this shape.

    Attributes
    ----------
    model_, in_shape_, layers_, pool_, precision_, n_features_out_, weights_sha256_
    """

    def __init__(self, run_dir=None, layers="bottleneck", pool="avg", *, batch_size=128, precision=None, device="cpu",
                 convert=False, image_shape=None):
        self.run_dir = run_dir
        self.layers = layers
        self.pool = pool
        self.batch_size = batch_size
        self.precision = precision
        self.device = device
        self.convert = convert
        self.image_shape = image_shape

    def fit(self, X=None, y=None):
        """Load the run and validate X against it (X may be None); return self."""
        if self.run_dir is None:
            raise DataError("EncoderFeatures needs run_dir, the directory of a trained run")
        run = load_run(Path(self.run_dir), map_location=resolve_device(self.device))
        layers = run.model.resolve_layers(self.layers)
        pooling = resolve_pool(run.model, layers, self.pool)
        self.n_features_out_ = sum(n for _, n in feature_layout(run.model, layers, pooling))
        self.in_shape_ = tuple(run.in_shape)
        if X is not None:
            self._check_shape(self._images(X, fit=False))
        self.model_ = run.model
        self.layers_ = layers
        self.pool_ = pooling.spec
        self.precision_ = run_precision(run, self.precision, next(run.model.parameters()).device)
        self.weights_sha256_ = run.weights_sha256
        return self
