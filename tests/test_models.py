import keras
import numpy as np
import pytest

from tripletml.losses import TripletLoss
from tripletml.models import (
    ARCHITECTURES,
    FoldTriplets,
    FusedBatchNormalization,
    L2Normalize,
    UnfoldTriplets,
    build_embedding,
    build_triplet_network,
    min_image_size,
)

# Arch -> (default embedding width, ends in L2 normalisation, minimum image size).
EXPECTED = {
    "schroff": (128, True, 38),
    "hoffer": (4096, False, 94),
    "practical": (4096, False, 65),
    "custom": (4098, True, 16),
    "convnet": (128, True, 16),
}


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1)).astype(np.float32)


def test_architecture_names():
    assert set(ARCHITECTURES) == set(EXPECTED)
    with pytest.raises(ValueError, match="resnet") as err:
        build_embedding("resnet", 105)
    assert "schroff" in str(err.value) and "convnet" in str(err.value)
    with pytest.raises(ValueError, match="blocks"):
        build_embedding("schroff", 105, blocks=3)  # option of another arch


def test_schroff_parameter_count():
    model = build_embedding("schroff", 105)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert model.count_params() == 5_782_208
    assert trainable == 5_782_080


@pytest.mark.parametrize("arch", sorted(EXPECTED))
@pytest.mark.parametrize("size", [105, 28])
def test_builds_and_runs_or_size_error(arch, size):
    dim, normalised, minimum = EXPECTED[arch]
    assert min_image_size(arch) == minimum
    if size < minimum:
        with pytest.raises(ValueError) as err:
            build_embedding(arch, size)
        message = str(err.value)
        assert arch in message and str(size) in message and str(minimum) in message
        return
    model = build_embedding(arch, size)
    assert model.input_shape == (None, size, size, 1)
    out = np.asarray(model(_images(2, size), training=False))
    assert out.shape == (2, dim) and np.all(np.isfinite(out))
    norms = np.linalg.norm(out, axis=1)
    if normalised:
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
        assert np.all((out > 0) & (out < 1))  # sigmoid head
    # The two images get different embeddings.
    assert np.abs(out[0] - out[1]).max() > 0


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_minimum_size_is_tight(arch):
    minimum = EXPECTED[arch][2]
    model = build_embedding(arch, minimum, embedding_dim=8)
    assert model.output_shape == (None, 8)
    with pytest.raises(ValueError, match=f"{minimum - 1}"):
        build_embedding(arch, minimum - 1, embedding_dim=8)


def test_embedding_dim_and_options():
    model = build_embedding("schroff", 64, embedding_dim=32)
    assert model.output_shape == (None, 32)
    model = build_embedding("convnet", 28, embedding_dim=24, filters=[8, 16], dropout=0.1)
    assert model.output_shape == (None, 24)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16]
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert min_image_size("convnet", blocks=2) == 4
    assert min_image_size("convnet", filters=[8, 8, 8], embedding_dim=3) == 8
    # A shared config: options another arch takes are ignored here, None is default.
    assert min_image_size("schroff", filters=64, blocks=4) == 38
    assert min_image_size("convnet", filters=64, blocks=None) == 16
    assert build_embedding("convnet", 28, blocks=None, dropout=None).output_shape == (None, 128)
    # Five pools need at least 32 pixels.
    with pytest.raises(ValueError, match="32"):
        build_embedding("convnet", 28, blocks=5)
    # Normalisation can be forced on or off.
    out = build_embedding("hoffer", 105, l2_normalize=True)(_images(2, 105))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    model = build_embedding("convnet", 28, l2_normalize=False)
    assert not any(isinstance(layer, L2Normalize) for layer in model.layers)
    for bad in (0, 28.0, "28"):
        with pytest.raises(ValueError, match="image_size"):
            build_embedding("convnet", bad)


def test_same_padded_pools_keep_odd_maps_whole():
    valid = build_embedding("convnet", 28)
    same = build_embedding("convnet", 28, pool_padding="same")
    assert valid.get_layer("flatten1").output.shape[-1] == 64  # 28-14-7-3-1
    assert same.get_layer("flatten1").output.shape[-1] == 2 * 2 * 64  # 28-14-7-4-2
    assert same.output_shape == (None, 128)
    # valid pools need 2^blocks pixels; same-padded ones fit any size
    assert min_image_size("convnet", blocks=5) == 32
    assert min_image_size("convnet", blocks=5, pool_padding="same") == 1
    assert build_embedding("convnet", 20, blocks=5, pool_padding="same").output_shape == (None, 128)
    with pytest.raises(ValueError, match="pool_padding"):
        build_embedding("convnet", 28, pool_padding="full")
    unpooled = build_embedding("convnet", 28, pool_padding="same", final_pool=False)
    assert unpooled.get_layer("flatten1").output.shape[-1] == 4 * 4 * 64  # 28-14-7-4, last map kept
    assert [layer.name for layer in unpooled.layers if isinstance(layer, keras.layers.MaxPooling2D)] == ["pool1", "pool2", "pool3"]


def test_l2_normalize_layer_handles_zero_rows():
    out = np.asarray(L2Normalize()(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def test_triplet_network_shares_one_embedding():
    embed = build_embedding("convnet", 28, embedding_dim=16, filters=8)
    net = build_triplet_network(embed, 28)
    assert net.input_shape == (None, 3, 28, 28, 1)
    assert net.output_shape == (None, 48)
    # The shared embedding's weights are the only weights.
    assert net.count_params() == embed.count_params()
    triplets = _images(12, 28).reshape(4, 3, 28, 28, 1)
    out = np.asarray(net(triplets, training=False))
    separately = [np.asarray(embed(triplets[:, k], training=False)) for k in range(3)]
    np.testing.assert_allclose(out, np.concatenate(separately, axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        build_triplet_network(embed, 32)


def test_fold_layers_roundtrip():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    folded = np.asarray(FoldTriplets()(x))
    np.testing.assert_array_equal(folded, x.reshape(6, 4))
    np.testing.assert_array_equal(np.asarray(UnfoldTriplets()(folded)), x.reshape(2, 12))


def test_save_and_load_embedding(tmp_path):
    embed = build_embedding("convnet", 28, embedding_dim=16, filters=[8, 8], dropout=0.2)
    x = _images(5, 28, seed=3)
    want = np.asarray(embed(x, training=False))
    path = str(tmp_path / "embed.keras")
    embed.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), want, rtol=1e-6, atol=1e-6)


def test_save_and_load_triplet_network(tmp_path):
    embed = build_embedding("convnet", 28, embedding_dim=16, filters=8, blocks=2)
    net = build_triplet_network(embed, 28)
    net.compile(optimizer="adam", loss=TripletLoss(margin=0.3))
    triplets = _images(9, 28, seed=4).reshape(3, 3, 28, 28, 1)
    net.fit(triplets, np.zeros(3), epochs=1, verbose=0)  # non-trivial BN statistics
    want = np.asarray(net(triplets, training=False))
    path = str(tmp_path / "triplet.keras")
    net.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(triplets, training=False)), want, rtol=1e-6, atol=1e-6)
    assert isinstance(loaded.loss, TripletLoss) and loaded.loss.margin == 0.3


def _bn_pair(policy: str):
    """Keras's BatchNormalization and the fused one, same initial weights, under ``policy``."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras_bn, fused_bn = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
        for layer in (keras_bn, fused_bn):
            layer.build((None, 6, 6, 5))
        rng = np.random.default_rng(3)
        weights = [rng.uniform(0.5, 2.0, 5), rng.normal(0, 1, 5), rng.normal(0, 1, 5), rng.uniform(0.5, 2.0, 5)]
        for layer in (keras_bn, fused_bn):
            layer.set_weights([w.astype(np.float32) for w in weights])  # gamma, beta, moving mean, moving variance
        return keras_bn, fused_bn
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy, atol", [("float32", 1e-5), ("mixed_bfloat16", 0.05)])
def test_fused_batchnorm_computes_what_keras_batchnorm_does(policy: str, atol: float):
    import tensorflow as tf

    keras_bn, fused_bn = _bn_pair(policy)
    x = tf.constant(np.random.default_rng(4).normal(2.0, 3.0, (7, 6, 6, 5)).astype(np.float32))
    outs, grads = [], []
    for layer in (keras_bn, fused_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), tf.float32)
            loss = tf.reduce_sum(y * tf.cos(y))  # a non-linear loss: the gradient through the statistics matters
        outs.append(y.numpy())
        grads.append(tape.gradient(loss, [x, *layer.trainable_variables]))
    np.testing.assert_allclose(outs[1], outs[0], atol=atol)
    assert np.abs(outs[0]).max() > 0.5  # not a degenerate output
    for g_fused, g_keras in zip(grads[1], grads[0]):
        np.testing.assert_allclose(np.asarray(g_fused, np.float32), np.asarray(g_keras, np.float32), atol=20 * atol, rtol=atol)
    # Moving statistics take the same (biased) batch variance at the same momentum.
    for v_fused, v_keras in zip(fused_bn.non_trainable_weights, keras_bn.non_trainable_weights):
        np.testing.assert_allclose(v_fused.numpy(), v_keras.numpy(), rtol=1e-5)
    seen = tf.cast(tf.cast(x, "bfloat16" if policy == "mixed_bfloat16" else "float32"), tf.float32)  # the layer's input
    batch_var = np.var(seen.numpy(), axis=(0, 1, 2))
    initial = _bn_pair("float32")[0].moving_variance.numpy()
    expected = 0.9 * initial + 0.1 * batch_var
    np.testing.assert_allclose(fused_bn.moving_variance.numpy(), expected, rtol=1e-4)
    # Inference: the moving averages, not the batch's statistics.
    np.testing.assert_allclose(
        np.asarray(fused_bn(x, training=False), np.float32), np.asarray(keras_bn(x, training=False), np.float32), atol=atol
    )


def test_fused_batchnorm_falls_back_to_keras_where_it_cannot_fuse():
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(5).normal(0.0, 1.0, (4, 6, 6, 5)).astype(np.float32))
    flat = tf.reshape(x, (4 * 36, 5))  # 2-D input: no fused kernel
    keras_bn, fused_bn = keras.layers.BatchNormalization(), FusedBatchNormalization()
    assert not fused_bn._fusable(flat, None) and fused_bn._fusable(x, None)
    np.testing.assert_allclose(fused_bn(flat, training=True).numpy(), keras_bn(flat, training=True).numpy(), atol=1e-5)
    np.testing.assert_allclose(fused_bn.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-6)
    assert not FusedBatchNormalization(synchronized=True)._fusable(x, None)  # tf.distribute's global statistics


def test_convnet_uses_the_fused_batchnorm_and_reloads(tmp_path):
    model = build_embedding("convnet", 28, 16, filters=8)
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in model.layers) == 4
    model(_images(6, 28), training=True)  # moves the moving averages off their initial values
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(again.get_layer("bn1"), FusedBatchNormalization)
    np.testing.assert_allclose(again.predict(_images(3, 28, seed=1), verbose=0), model.predict(_images(3, 28, seed=1), verbose=0), atol=1e-6)


def test_schroff_sees_the_same_functions_with_paper_or_ink_high():
    """The assignment fed paper = 1, the project feeds ink = 1. The schroff network's first
    layer is a 1x1 unpadded convolution with a bias, so x -> 1 - x is absorbed exactly by
    w -> -w, b -> b + w: every network on one convention is a network on the other."""
    ink = build_embedding("schroff", 38)
    paper = build_embedding("schroff", 38)
    paper.set_weights(ink.get_weights())
    conv = next(layer for layer in paper.layers if not isinstance(layer, keras.layers.InputLayer))
    assert isinstance(conv, keras.layers.Conv2D) and conv.kernel_size == (1, 1) and conv.padding == "valid"
    w, b = conv.get_weights()
    conv.set_weights([-w, b + w.sum(axis=(0, 1, 2))])
    x = (_images(4, 38) > 0.7).astype(np.float32)  # binary strokes, as at 105 px
    np.testing.assert_allclose(paper.predict(1.0 - x, verbose=0), ink.predict(x, verbose=0), atol=2e-5)


def test_residual_convnet_adds_its_shortcut_and_reloads(tmp_path):
    from tripletml.models import ResidualBlock

    model = build_embedding("convnet", 28, 16, filters=[8, 8, 16], blocks=3, residual=True, pool_padding="same")
    blocks = [layer for layer in model.layers if isinstance(layer, ResidualBlock)]
    assert [b.filters for b in blocks] == [8, 8, 16] and model.output_shape == (None, 16)
    # kernels + BN gammas and betas: two of each, plus a 1x1 projection's only where the width changes (1 -> 8, 8 -> 16)
    assert [len(b.trainable_weights) for b in blocks] == [2 * 3 + 3, 2 * 3, 2 * 3 + 3]
    assert min_image_size("convnet", blocks=3, residual=True) == min_image_size("convnet", blocks=3)
    # With both convs zeroed the residual branch is BN(0) = 0 at fresh statistics, so the identity block is ReLU(x).
    same = blocks[1]
    for conv in (same.conv_a, same.conv_b):
        conv.kernel.assign(np.zeros(conv.kernel.shape, np.float32))
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(same(x, training=False)), np.maximum(x, 0), atol=1e-5)
    model(_images(6, 28), training=True)  # moves the moving averages
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(_images(3, 28, seed=1), verbose=0), model.predict(_images(3, 28, seed=1), verbose=0), atol=1e-6)
