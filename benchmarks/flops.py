"""The ML-20M shape and the cost models behind the suite's TFLOP/s and GB/s: what a Mult-VAE
epoch and a full ranking must compute and move, set against the H100's datasheet figures."""

from __future__ import annotations

# ML-20M after the usual filters (PROTOCOLS.md): users x items, interactions; and the raw file.
ML20M_USERS, ML20M_ITEMS, ML20M_NNZ = 136_677, 20_108, 10_000_000
ML20M_RAW_ROWS = 20_000_263

# NVIDIA H100 SXM5 datasheet, dense (no sparsity): FP32 67 TFLOP/s, TF32 tensor 495 TFLOP/s,
# BF16 tensor 989 TFLOP/s; HBM3 3.35 TB/s.
H100_SXM = {"fp32_tflops": 67.0, "tf32_tflops": 495.0, "bf16_tflops": 989.0, "hbm_tb_s": 3.35}

# Mult-VAE as the paper sets it for ML-20M: I-600-200-600-I, batch 500.
VAE_HIDDEN, VAE_LATENT, VAE_BATCH = 600, 200, 500


def vae_layer_dims(n_items: int) -> list[tuple[int, int]]:
    """Mult-VAE's matmuls, (in, out): the encoder's last layer emits mean and log-variance."""
    return [(n_items, VAE_HIDDEN), (VAE_HIDDEN, 2 * VAE_LATENT), (VAE_LATENT, VAE_HIDDEN),
            (VAE_HIDDEN, n_items)]


def vae_train_flops(rows: int, n_items: int) -> float:
    """Matmul FLOPs of one training pass over ``rows`` users: forward 2*m*k*n per layer, backward
    twice that (input and weight gradients), less the input gradient of the first layer, which
    autograd skips (the data needs no gradient). Elementwise work (tanh, softmax, Adam) is left
    out: it is memory traffic, counted by `vae_train_bytes`."""
    forward = sum(2 * a * b for a, b in vae_layer_dims(n_items))
    return float(rows) * (3 * forward - 2 * n_items * VAE_HIDDEN)


def vae_params(n_items: int) -> int:
    return sum(a * b + b for a, b in vae_layer_dims(n_items))


def vae_train_bytes(rows: int, steps: int, n_items: int) -> float:
    """A rough model of one epoch's DRAM traffic in float32: per user row ~16 passes over an
    items-wide vector (dense batch row, normalise, dropout, logits, log-softmax and its
    gradient, the loss product, the first and last layers' reads of their activations), and per
    step ~10 passes over the parameters (forward and backward reads, gradient write, Adam's
    reads of p, g, m, v and writes of p, m, v). A model, not a counter: it says how far the
    epoch is from being bound by memory bandwidth."""
    return 4.0 * (16.0 * rows * n_items + 10.0 * steps * vae_params(n_items))


def ranking_bytes(users: int, n_items: int) -> float:
    """Full-ranking traffic modelled as three float32 passes over the users x items scores
    (write the scores, mask the history in place, read them for top-k)."""
    return 4.0 * 3 * users * n_items

