"""The optimizer-step ops of ONNX's `ai.onnx.preview.training` domain: Momentum, Adagrad and Adam (opset 1).

Each takes a learning rate R (0-d float), an iteration count T (0-d int64) and n groups of same-shaped tensors
(for Adam: X_1..X_n, G_1..G_n, V_1..V_n, H_1..H_n), and returns the updated tensors in the same grouping. The
update rules are the spec's (onnx/defs/training/defs.cc) as onnx's reference evaluator computes them; the
arithmetic runs in each X's dtype, with R and T cast to it.
"""

from __future__ import annotations

from tvm import relax

from ..converters import const, converter, dtype_of, refuse

_DOMAIN = "ai.onnx.preview.training"


def _groups(inputs, count: int, op: str) -> tuple[relax.Expr, relax.Expr, list[list[relax.Expr]]]:
    """(R, T, [[X_i, G_i, ...] for each tensor i]) for an op with `count` tensors per group."""
    r, t, rest = inputs[0], inputs[1], list(inputs[2:])
    if r is None or t is None or not rest or len(rest) % count or any(x is None for x in rest):
        raise refuse(f"{op} needs R, T and {count} groups of equally many tensors")
    n = len(rest) // count
    return r, t, [[rest[k * n + i] for k in range(count)] for i in range(n)]


def _scalar_of(bb, x: relax.Expr, dtype: str) -> relax.Expr:
    """A 0-d run-time value cast to `dtype`."""
    return bb.normalize(relax.op.astype(x, dtype)) if dtype_of(x) != dtype else x


def _regularized(x, g, norm_coefficient: float, dtype: str):
    """g + norm_coefficient * x: the gradient of the L2 regularization term added."""
    return relax.op.add(relax.op.multiply(const(norm_coefficient, dtype), x), g)


@converter(_DOMAIN, "Momentum")
def momentum(bb, inputs, attrs, ctx):
    """SG with standard or Nesterov momentum: v' = alpha * v + beta' * g_r (beta' = 1 at T = 0),
    x' = x - R * v' (standard) or x - R * (g_r + alpha * v') (nesterov); outputs X'_1.., V'_1..."""
    r, t, groups = _groups(inputs, 3, "Momentum")
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    mode = attrs.get("mode", b"standard")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("standard", "nesterov"):
        raise refuse(f"Momentum mode '{mode}' (ONNX: standard or nesterov)")
    xs, vs = [], []
    for x, g, v in groups:
        dtype = dtype_of(x)
        g_r = bb.normalize(_regularized(x, g, float(attrs["norm_coefficient"]), dtype))
        first = relax.op.less_equal(t, const(0, dtype_of(t)))
        beta_t = relax.op.where(first, const(1.0, dtype), const(beta, dtype))
        v_new = bb.normalize(relax.op.add(relax.op.multiply(const(alpha, dtype), v), relax.op.multiply(beta_t, g_r)))
        step = v_new if mode == "standard" else relax.op.add(g_r, relax.op.multiply(const(alpha, dtype), v_new))
        xs.append(relax.op.subtract(x, relax.op.multiply(_scalar_of(bb, r, dtype), step)))
        vs.append(v_new)
    return relax.Tuple([bb.normalize(e) for e in xs + vs])


@converter(_DOMAIN, "Adagrad")
def adagrad(bb, inputs, attrs, ctx):
    """ADAGRAD: r = R / (1 + T * decay_factor), h' = h + g_r^2, x' = x - r * g_r / (sqrt(h') + epsilon);
    outputs X'_1.., H'_1..."""
    r, t, groups = _groups(inputs, 3, "Adagrad")
    decay, epsilon = float(attrs.get("decay_factor", 0.0)), float(attrs.get("epsilon", 0.0))
    xs, hs = [], []
    for x, g, h in groups:
        dtype = dtype_of(x)
        g_r = bb.normalize(_regularized(x, g, float(attrs.get("norm_coefficient", 0.0)), dtype))
        rate = relax.op.divide(_scalar_of(bb, r, dtype), relax.op.add(
            const(1.0, dtype), relax.op.multiply(_scalar_of(bb, t, dtype), const(decay, dtype))))
        h_new = bb.normalize(relax.op.add(h, relax.op.multiply(g_r, g_r)))
        scale = relax.op.add(relax.op.sqrt(h_new), const(epsilon, dtype))
        xs.append(relax.op.subtract(x, relax.op.divide(relax.op.multiply(rate, g_r), scale)))
        hs.append(h_new)
    return relax.Tuple([bb.normalize(e) for e in xs + hs])


@converter(_DOMAIN, "Adam")
def adam(bb, inputs, attrs, ctx):
    """Adam: v' = alpha v + (1 - alpha) g_r, h' = beta h + (1 - beta) g_r^2, r = R sqrt(1 - beta^T) / (1 - alpha^T)
    for T > 0 (else R), x' = (1 - norm_coefficient_post) (x - r v' / (sqrt(h') + epsilon)); outputs
    X'_1.., V'_1.., H'_1..."""
    r, t, groups = _groups(inputs, 4, "Adam")
    alpha, beta = float(attrs.get("alpha", 0.9)), float(attrs.get("beta", 0.999))
    epsilon, post = float(attrs.get("epsilon", 0.0)), float(attrs.get("norm_coefficient_post", 0.0))
    xs, vs, hs = [], [], []
    for x, g, v, h in groups:
        dtype = dtype_of(x)
        g_r = bb.normalize(_regularized(x, g, float(attrs.get("norm_coefficient", 0.0)), dtype))
        v_new = bb.normalize(relax.op.add(relax.op.multiply(const(alpha, dtype), v),
                                          relax.op.multiply(const(1.0 - alpha, dtype), g_r)))
        h_new = bb.normalize(relax.op.add(relax.op.multiply(const(beta, dtype), h),
                                          relax.op.multiply(const(1.0 - beta, dtype), relax.op.multiply(g_r, g_r))))
        steps, rate = _scalar_of(bb, t, dtype), _scalar_of(bb, r, dtype)
        one = const(1.0, dtype)
        corrected = relax.op.divide(
            relax.op.multiply(rate, relax.op.sqrt(relax.op.subtract(one, relax.op.power(const(beta, dtype), steps)))),
            relax.op.subtract(one, relax.op.power(const(alpha, dtype), steps)))
        rate = relax.op.where(relax.op.greater(t, const(0, dtype_of(t))), corrected, rate)
        scale = relax.op.add(relax.op.sqrt(h_new), const(epsilon, dtype))
        x_new = relax.op.subtract(x, relax.op.multiply(rate, relax.op.divide(v_new, scale)))
        xs.append(relax.op.multiply(const(1.0 - post, dtype), x_new))
        vs.append(v_new)
        hs.append(h_new)
    return relax.Tuple([bb.normalize(e) for e in xs + vs + hs])
