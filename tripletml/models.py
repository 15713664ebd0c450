"""Embedding networks and the triplet network that shares one across a triplet.

``build_embedding(arch, image_size)`` maps model images (batch, S, S, 1) float32
(1 = ink) to (batch, D) embeddings. Each architecture is a flat list of layer specs,
so the same list drives both the Keras build and the analytic spatial-size check
(:func:`min_image_size`): a too-small image size fails with a clear message before
Keras is involved.

All custom layers are registered Keras serialisables (no Lambda layers), so
``keras.models.load_model("x.keras")`` works once this module is imported.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from tripletml.architectures import ARCHITECTURES, _fits, _min_size, _spec, min_image_size  # noqa: F401

# --------------------------------------------------------------------------------
# Serialisable layers.


@keras.saving.register_keras_serializable(package="tripletml")
class L2Normalize(keras.layers.Layer):
    """Scale each embedding to unit L2 norm along ``axis``."""

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon

    def call(self, x):
        # The epsilon floor keeps an all-zero row (dead ReLUs) finite.
        sq = ops.sum(ops.square(x), axis=self.axis, keepdims=True)
        return x * ops.rsqrt(ops.maximum(sq, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tripletml")
class FoldTriplets(keras.layers.Layer):
    """(B, group, *item) -> (B * group, *item): stack a batch of tuples as one batch.

    Row-major order keeps each tuple's members adjacent (a0, p0, n0, a1, ...), which
    :class:`UnfoldTriplets` relies on to put them back side by side.
    """

    def __init__(self, group: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.group = group

    def call(self, x):
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * self.group
        return (batch,) + tuple(input_shape[2:])

    def get_config(self) -> dict:
        return {**super().get_config(), "group": self.group}


@keras.saving.register_keras_serializable(package="tripletml")
class UnfoldTriplets(keras.layers.Layer):
    """(B * group, D) -> (B, group * D): concat(a, p, n) embeddings per row."""

    def __init__(self, group: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.group = group

    def call(self, x):
        return ops.reshape(x, (-1, self.group * x.shape[-1]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.group
        return (batch, self.group * input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "group": self.group}


@keras.saving.register_keras_serializable(package="tripletml")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization, computed by TensorFlow's fused batch-norm kernel.

    Keras 3 normalises with separate moment, subtract, scale and shift ops in float32
    (casting bf16 activations up and down); on this project's 2-core CPU that made the
    convnet's four BatchNorms more than half of a training step (docs/results.md). The
    fused kernel computes the same function in one pass - Keras 2's ``fused=True``,
    which the assignment ran on - with the same weights, momentum and epsilon: batch
    statistics (biased variance) in training, the moving averages otherwise. Other
    cases (a mask, ``synchronized`` statistics under tf.distribute, renorm, an axis
    other than the last of a 4-D input) take Keras's own path.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
            n = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 2.0)
            m = self.momentum
            self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * m + mean * (1.0 - m))
            self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * m + variance * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset,
                mean=tf.cast(self.moving_mean, tf.float32), variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon, is_training=False,
            )  # fmt: skip
        return tf.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="tripletml")
class ResidualBlock(keras.layers.Layer):
    """ReLU(BN(conv3(ReLU(BN(conv3(x))))) + shortcut(x)), every conv 3x3 same-padded.

    The shortcut is x itself when the widths agree, else a 1x1 conv and BatchNorm (He et
    al. 2016's projection). The spatial size is kept; pooling follows as a separate layer.
    """

    def __init__(self, filters: int, sync_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.sync_batchnorm = bool(sync_batchnorm)

        def conv(k: int, name: str) -> layers.Conv2D:
            return layers.Conv2D(self.filters, k, padding="same", use_bias=False, name=name, dtype=self.dtype_policy)

        def bn(name: str) -> FusedBatchNormalization:
            return FusedBatchNormalization(synchronized=self.sync_batchnorm, name=name, dtype=self.dtype_policy)

        self.conv_a, self.bn_a = conv(3, "conv_a"), bn("bn_a")
        self.conv_b, self.bn_b = conv(3, "conv_b"), bn("bn_b")
        self.project, self.bn_project = conv(1, "project"), bn("bn_project")

    def build(self, input_shape):
        self._projects = input_shape[-1] != self.filters
        self.conv_a.build(input_shape)
        inner = (*input_shape[:-1], self.filters)
        for layer in (self.bn_a, self.conv_b, self.bn_b):
            layer.build(inner)
        if self._projects:
            self.project.build(input_shape)
            self.bn_project.build(inner)

    def call(self, x, training=None):
        y = ops.relu(self.bn_a(self.conv_a(x), training=training))
        y = self.bn_b(self.conv_b(y), training=training)
        shortcut = self.bn_project(self.project(x), training=training) if self._projects else x
        return ops.relu(y + ops.cast(shortcut, y.dtype))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "sync_batchnorm": self.sync_batchnorm}


# --------------------------------------------------------------------------------
# Builders.


def _make_layer(op: tuple, name: str, sync_batchnorm: bool = False) -> keras.layers.Layer:
    kind = op[0]
    if kind == "conv":
        _, filters, k, stride, padding, l2, activation = op
        return layers.Conv2D(
            filters, k, strides=stride, padding=padding, activation=activation,
            # A conv without activation is followed by BatchNorm, whose shift makes
            # a bias redundant.
            use_bias=activation is not None,
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None, name=name,
        )  # fmt: skip
    if kind == "resblock":
        return ResidualBlock(op[1], sync_batchnorm=sync_batchnorm, name=name)
    if kind == "pool":
        return layers.MaxPooling2D(padding=op[1], name=name)
    if kind == "bn":
        # synchronized: under tf.distribute, statistics over the global batch, as on one device
        return FusedBatchNormalization(synchronized=sync_batchnorm, name=name)
    if kind == "relu":
        return layers.ReLU(name=name)
    if kind == "dropout":
        return layers.Dropout(op[1], name=name)
    if kind == "flatten":
        return layers.Flatten(name=name)
    if kind == "dense":
        _, units, activation, l2 = op
        return layers.Dense(
            units, activation=activation,
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None, name=name,
        )  # fmt: skip
    if kind == "l2norm":
        return L2Normalize(name=name)
    raise AssertionError(f"unknown layer spec {op!r}")


def _check_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def build_embedding(
    arch: str,
    image_size: int,
    embedding_dim: int | None = None,
    l2_normalize: bool | None = None,
    name: str | None = None,
    sync_batchnorm: bool = False,
    **options,
) -> keras.Model:
    """Embedding network ``arch`` for (batch, S, S, 1) float32 images -> (batch, D).

    ``arch`` is one of :data:`ARCHITECTURES`. ``embedding_dim`` sets the final Dense
    width (None: the arch's own, 128 or 4096/4098). ``l2_normalize`` forces the final
    unit-norm layer on or off (None: the arch's default). ``options`` are
    arch-specific (convnet: ``filters``, ``blocks``, ``dropout``); a None option
    means the default, an option the arch doesn't take is a ValueError.
    ``sync_batchnorm`` makes BatchNorm use the global batch's statistics under tf.distribute.
    """
    image_size = _check_size(image_size)
    spec = _spec(arch, embedding_dim, options)
    if not _fits(spec, image_size):
        raise ValueError(
            f"image size {image_size} is too small for architecture {arch!r}: a "
            f"feature map shrinks below 1x1 before Flatten; the minimum size is "
            f"{_min_size(spec)}"
        )
    if l2_normalize is not None:
        spec = [op for op in spec if op[0] != "l2norm"]
        if l2_normalize:
            spec.append(("l2norm",))

    inputs = keras.Input((image_size, image_size, 1), dtype="float32", name="image")
    x = inputs
    counts: dict[str, int] = {}
    for op in spec:
        counts[op[0]] = counts.get(op[0], 0) + 1
        x = _make_layer(op, f"{op[0]}{counts[op[0]]}", sync_batchnorm)(x)
    return keras.Model(inputs, x, name=name or f"{arch}_embedding")


def build_triplet_network(embedding: keras.Model, image_size: int) -> keras.Model:
    """Triplet network: (B, 3, S, S, 1) [anchor, positive, negative] -> (B, 3*D).

    The one shared ``embedding`` runs once on the 3B stacked images (one batched
    call, one set of BatchNorm statistics), and each output row is
    concat(embed(a), embed(p), embed(n)), the layout :class:`TripletLoss` splits.
    """
    image_size = _check_size(image_size)
    expected = (image_size, image_size, 1)
    got = tuple(embedding.input_shape[1:])
    if got != expected:
        raise ValueError(f"embedding takes inputs of shape {got}, not {expected}")
    inputs = keras.Input((3,) + expected, dtype="float32", name="triplet")
    x = FoldTriplets(3, name="fold_triplets")(inputs)
    x = embedding(x)
    outputs = UnfoldTriplets(3, name="unfold_triplets")(x)
    return keras.Model(inputs, outputs, name="triplet_network")
